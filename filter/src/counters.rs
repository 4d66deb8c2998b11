//! Limit and budget counters in Envoy's shared data: one record per scope, updated with a
//! compare-and-swap retry loop so counts are exact across all worker threads of one Envoy.
//!
//! Two placements ([`Placement`]). Configured keys and teams (standalone mode) keep a record
//! under their own name for the life of the Envoy: their budgets live only there. Looked-up
//! scopes (xDS mode) share a fixed set of [`SLOTS`] records, each tagged with the scope it
//! holds: proxy-wasm cannot remove shared data, so a record per distinct key would grow with
//! every key an Envoy ever serves. A scope claims a free slot among its [`PROBES`] candidates,
//! else one whose scope has been idle (no request this minute or the last, nothing reserved),
//! else the least recently counted one. Losing a slot costs that Envoy's local count only: the
//! fleet's counts and spend are the control plane's.

use sluice_core::error::{GatewayError, LimitScope};
use sluice_core::limits::{self, Admission, Remaining, Reservation, STATE_LEN, ScopeLimits, ScopeState, WINDOW_MS};

use crate::host::{CasResult, Host};

/// Retries before giving up on a contended record (each retry means another worker made
/// progress, so this bound is only ever hit by a broken host).
const MAX_CAS_ATTEMPTS: usize = 64;

/// Slots for looked-up scopes' records: ~0.2 KB each in Envoy's heap, so ~1.6 MB at most.
pub const SLOTS: u64 = 8192;
/// Candidate slots per scope: with k scopes busy at once, a newcomer finds every candidate busy
/// (and evicts one) with probability (k / SLOTS)^8, under one in 10^7 for k = 1,000.
pub const PROBES: u64 = 8;

/// Where a scope's record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Under the scope's own name, created at configure time ([`ensure_exists`]).
    Named,
    /// In one of the [`SLOTS`] shared records, claimed on first use.
    Slotted,
}

/// A counter the request must be checked against.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub name: &'a str,
    pub limits: ScopeLimits,
    pub kind: LimitScope,
    pub placement: Placement,
}

/// An admission held on one scope, settled when the request ends.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub name: String,
    pub placement: Placement,
    pub limits: ScopeLimits,
    pub reservation: Reservation,
    /// The admission moved this Envoy's count past a tenth of an RPM/TPM limit: in xDS mode
    /// the fleet should hear of it now ([`limits::crosses_tenth`]).
    pub checkpoint: bool,
}

/// Reads a scope record, applies `f`, and writes it back so that no other worker's update is
/// lost (a named record through the host's in-place update; a slotted one with CAS, since
/// the slot itself is chosen from what was read).
fn update<H: Host, T>(
    host: &H,
    name: &str,
    placement: Placement,
    now_window: u64,
    mut f: impl FnMut(&mut ScopeState) -> T,
) -> Option<T> {
    if placement == Placement::Named {
        let mut result = None;
        let written = host.shared_update(name, &mut |record| {
            let mut state = ScopeState::decode(record);
            result = Some(f(&mut state));
            record.clear();
            record.extend_from_slice(&state.encode());
            true
        });
        return result.filter(|_| written);
    }
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (key, mut state, cas) = claim(host, name, now_window);
        let result = f(&mut state);
        match host.shared_set(&key, &slot_record(&state, name), cas) {
            CasResult::Written => return Some(result),
            CasResult::Conflict => continue,
            CasResult::Failed => return None,
        }
    }
    None
}

/// The shared-data names of a scope's candidate slots (FNV-1a of the name, double hashing).
fn candidates(name: &str) -> impl Iterator<Item = String> {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let step = (hash >> 32) | 1;
    (0..PROBES).map(move |i| format!("sluice:slot:{}", hash.wrapping_add(i.wrapping_mul(step)) % SLOTS))
}

/// A slotted record: the scope's state, then its name.
fn slot_record(state: &ScopeState, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATE_LEN + name.len());
    out.extend_from_slice(&state.encode());
    out.extend_from_slice(name.as_bytes());
    out
}

/// A slotted record's state and the scope it holds (None: not a record).
fn read_slot(bytes: &[u8]) -> Option<(ScopeState, &[u8])> {
    let (state, owner) = (bytes.get(..STATE_LEN)?, bytes.get(STATE_LEN..)?);
    Some((ScopeState::decode(state), owner))
}

/// The slot holding `name`'s record, its state and CAS; or, if it has none, the slot it takes
/// with a fresh state: the first free candidate, else the one whose scope is idle (or, failing
/// that, was counted least recently). Records are never removed, so a free candidate means the
/// scope was never placed after it: the search stops there.
///
/// Two workers may take the same free slot for different scopes at once (Envoy's shared data
/// has no create-if-absent); the loser's first count is then lost and it claims again.
fn claim<H: Host>(host: &H, name: &str, now_window: u64) -> (String, ScopeState, Option<u32>) {
    // The best slot to take over so far: (slot, cas, idle, window).
    let mut victim: Option<(String, Option<u32>, bool, u64)> = None;
    for slot in candidates(name) {
        let (bytes, cas) = host.shared_get(&slot);
        let Some((state, owner)) = bytes.as_deref().and_then(read_slot) else {
            return (slot, ScopeState::default(), cas);
        };
        if owner == name.as_bytes() {
            return (slot, state, cas);
        }
        let idle = state.window.saturating_add(1) < now_window && state.reserved_nanos == 0 && state.in_flight() == 0;
        // Idle before busy, then the older minute.
        let rank = (!idle, state.window);
        if victim.as_ref().is_none_or(|v| rank < (!v.2, v.3)) {
            victim = Some((slot, cas, idle, state.window));
        }
    }
    let Some((slot, cas, idle, _)) = victim else {
        // PROBES ≥ 1, so some candidate was read: unreachable, but a value, not a panic.
        return (format!("sluice:slot:{SLOTS}"), ScopeState::default(), None);
    };
    if !idle {
        host.count("sluice.counters.evicted", 1);
    }
    (slot, ScopeState::default(), cas)
}

/// Creates a named scope's record if it doesn't exist yet (done at configure time, before
/// traffic, because two workers creating the same record concurrently could lose an update).
pub fn ensure_exists<H: Host>(host: &H, name: &str) {
    if host.shared_get(name).0.is_none() {
        host.shared_set(name, &ScopeState::default().encode(), None);
    }
}

/// Merges the remaining allowance of several scopes: the tightest one is what the client has.
fn tighter(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.1 < x.1 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Admits a request on every scope, or on none: if one refuses, the earlier ones are released.
pub fn admit_all<H: Host>(
    host: &H,
    scopes: &[Scope<'_>],
    now_ms: u64,
    est_tokens: u64,
    max_cost_nanos: u64,
    admission: Admission,
) -> Result<(Vec<Ticket>, Remaining), GatewayError> {
    let mut tickets: Vec<Ticket> = Vec::with_capacity(scopes.len());
    let mut remaining = Remaining::default();
    for scope in scopes {
        let outcome = update(host, scope.name, scope.placement, now_ms / WINDOW_MS, |state| {
            let before = (state.requests, state.tokens);
            let admitted =
                limits::admit_as(state, &scope.limits, scope.kind, now_ms, est_tokens, max_cost_nanos, admission);
            let checkpoint = limits::crosses_tenth(scope.limits.rpm, before.0, state.requests)
                || limits::crosses_tenth(scope.limits.tpm, before.1, state.tokens);
            admitted.map(|(reservation, rem)| (reservation, rem, checkpoint))
        });
        let result = outcome.unwrap_or(Err(GatewayError::Internal { detail: "shared counters unavailable" }));
        match result {
            Ok((reservation, rem, checkpoint)) => {
                // A deployment's limit is the provider's, not the client's allowance.
                if scope.kind != LimitScope::Deployment {
                    remaining.requests = tighter(remaining.requests, rem.requests);
                    remaining.tokens = tighter(remaining.tokens, rem.tokens);
                }
                tickets.push(Ticket {
                    name: scope.name.to_owned(),
                    placement: scope.placement,
                    limits: scope.limits,
                    reservation,
                    checkpoint,
                });
            }
            Err(e) => {
                release_all(host, &tickets, now_ms);
                return Err(e);
            }
        }
    }
    Ok((tickets, remaining))
}

/// Settles every ticket with the request's real tokens and cost.
pub fn settle_all<H: Host>(host: &H, tickets: &[Ticket], now_ms: u64, tokens: u64, cost_nanos: u64) -> bool {
    tickets.iter().all(|t| {
        update(host, &t.name, t.placement, now_ms / WINDOW_MS, |state| {
            limits::settle(state, &t.limits, now_ms, &t.reservation, tokens, cost_nanos)
        })
        .is_some()
    })
}

/// Gives back reservations that will not be used (a scope refused after earlier ones admitted).
pub fn release_all<H: Host>(host: &H, tickets: &[Ticket], now_ms: u64) {
    for t in tickets {
        update(host, &t.name, t.placement, now_ms / WINDOW_MS, |state| {
            limits::release(state, &t.limits, now_ms, &t.reservation)
        });
    }
}

/// Stores what the other Envoys of the fleet counted on a looked-up scope in `window` (the
/// singleton, from a sync answer: xDS mode, so slotted); the workers' admissions count it
/// against the limits.
pub fn set_remote<H: Host>(host: &H, name: &str, window: u64, requests: u64, tokens: u64) -> bool {
    update(host, name, Placement::Slotted, window, |state| state.set_remote(window, requests, tokens)).is_some()
}

/// Stores the fleet's totals on a scope that came with a key lookup (slotted; see
/// `ScopeState::set_fleet_total`).
pub fn set_fleet_total<H: Host>(host: &H, name: &str, window: u64, requests: u64, tokens: u64) -> bool {
    update(host, name, Placement::Slotted, window, |state| state.set_fleet_total(window, requests, tokens)).is_some()
}

/// This Envoy's own requests and tokens on a looked-up scope in `window` (what the singleton
/// reports). Read only: a scope without a record counted nothing.
pub fn local_counts<H: Host>(host: &H, name: &str, window: u64) -> (u64, u64) {
    for slot in candidates(name) {
        match host.shared_get(&slot).0.as_deref().and_then(read_slot) {
            Some((state, owner)) if owner == name.as_bytes() => return state.local_counts(window),
            Some(_) => {}
            None => break,
        }
    }
    (0, 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::rc::Rc;

    use super::*;
    use crate::mock_host::{MockEnvoy, MockHost};

    const MINUTE: u64 = WINDOW_MS;
    const LIMITS: ScopeLimits = ScopeLimits::new(Some(100), None, None, None);

    /// One request admitted and settled on a looked-up scope at `now_ms`.
    fn count(host: &MockHost, name: &str, now_ms: u64) {
        let scope = Scope { name, limits: LIMITS, kind: LimitScope::Key, placement: Placement::Slotted };
        let (tickets, _) = admit_all(host, &[scope], now_ms, 10, 0, Admission::New).unwrap();
        assert!(settle_all(host, &tickets, now_ms, 10, 0));
    }

    fn requests(host: &MockHost, name: &str, now_ms: u64) -> u64 {
        local_counts(host, name, now_ms / MINUTE).0
    }

    /// Names whose first candidate slot is `slot` (found by search: FNV is cheap).
    fn name_in(slot: &str, taken: &mut u64) -> String {
        loop {
            *taken += 1;
            let name = format!("sluice:k:search{taken}");
            if candidates(&name).next().as_deref() == Some(slot) {
                return name;
            }
        }
    }

    #[test]
    fn looked_up_scopes_stay_within_the_slots_however_many_an_envoy_serves() {
        let envoy = MockEnvoy::new(0);
        let host = MockHost::new(Rc::clone(&envoy));
        // Three times as many scopes as slots, a new batch every few minutes.
        let total = SLOTS * 3;
        for i in 0..total {
            count(&host, &format!("sluice:k:key{i}"), (i / 1000) * 3 * MINUTE);
        }
        assert!(envoy.shared_len() as u64 <= SLOTS, "{} records", envoy.shared_len());
        // The latest batch (this minute) kept every count.
        let now = ((total - 1) / 1000) * 3 * MINUTE;
        let latest = (total - 1) / 1000 * 1000;
        for i in latest..total {
            assert_eq!(requests(&host, &format!("sluice:k:key{i}"), now), 1, "key{i}");
        }
        assert_eq!(envoy.metric("sluice.counters.evicted"), 0, "only idle scopes were replaced");
    }

    #[test]
    fn a_scope_takes_an_idle_slot_before_a_busy_one_and_evicts_only_when_all_are_busy() {
        let envoy = MockEnvoy::new(0);
        let host = MockHost::new(Rc::clone(&envoy));
        let target = "sluice:k:target";
        let slots: Vec<String> = candidates(target).collect();
        let mut taken = 0;
        let others: Vec<String> = slots.iter().map(|s| name_in(s, &mut taken)).collect();
        let now = 10 * MINUTE;
        // Every candidate of `target` holds another scope: the first one idle (counted three
        // minutes ago), the rest counted this minute.
        count(&host, &others[0], now - 3 * MINUTE);
        for other in &others[1..] {
            count(&host, other, now);
        }
        count(&host, target, now);
        assert_eq!(requests(&host, target, now), 1);
        assert_eq!(local_counts(&host, &others[0], (now - 3 * MINUTE) / MINUTE), (0, 0), "the idle one made room");
        for other in &others[1..] {
            assert_eq!(requests(&host, other, now), 1, "{other} kept its count");
        }
        assert_eq!(envoy.metric("sluice.counters.evicted"), 0);
    }

    #[test]
    fn when_every_candidate_is_busy_the_least_recently_counted_scope_is_evicted() {
        let envoy = MockEnvoy::new(0);
        let host = MockHost::new(Rc::clone(&envoy));
        let target = "sluice:k:target";
        let mut taken = 0;
        let others: Vec<String> = candidates(target).map(|s| name_in(&s, &mut taken)).collect();
        let now = 10 * MINUTE;
        count(&host, &others[0], now - MINUTE); // busy (last minute), but the oldest
        for other in &others[1..] {
            count(&host, other, now);
        }
        count(&host, target, now);
        assert_eq!(requests(&host, target, now), 1);
        assert_eq!(envoy.metric("sluice.counters.evicted"), 1);
        assert_eq!(local_counts(&host, &others[0], now / MINUTE - 1), (0, 0), "evicted");
        for other in &others[1..] {
            assert_eq!(requests(&host, other, now), 1, "{other} kept its count");
        }
    }

    #[test]
    fn named_records_are_never_displaced() {
        let envoy = MockEnvoy::new(0);
        let host = MockHost::new(Rc::clone(&envoy));
        ensure_exists(&host, "sluice:k:configured");
        let scope =
            Scope { name: "sluice:k:configured", limits: LIMITS, kind: LimitScope::Key, placement: Placement::Named };
        let (tickets, _) = admit_all(&host, &[scope], 0, 10, 0, Admission::New).unwrap();
        assert!(settle_all(&host, &tickets, 0, 10, 0));
        for i in 0..SLOTS * 2 {
            count(&host, &format!("sluice:k:key{i}"), 5 * MINUTE);
        }
        let state = ScopeState::decode(&host.shared_get("sluice:k:configured").0.unwrap());
        assert_eq!(state.local_counts(0).0, 1);
    }
}
