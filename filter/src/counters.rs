//! Limit and budget counters in Envoy's shared data: one record per scope, updated with a
//! compare-and-swap retry loop so counts are exact across all worker threads of one Envoy.

use sluice_core::error::{GatewayError, LimitScope};
use sluice_core::limits::{self, Remaining, Reservation, ScopeLimits, ScopeState};

use crate::host::{CasResult, Host};

/// Retries before giving up on a contended record (each retry means another worker made
/// progress, so this bound is only ever hit by a broken host).
const MAX_CAS_ATTEMPTS: usize = 64;

/// A counter the request must be checked against.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub name: &'a str,
    pub limits: ScopeLimits,
    pub kind: LimitScope,
}

/// An admission held on one scope, settled when the request ends.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub name: String,
    pub limits: ScopeLimits,
    pub reservation: Reservation,
    /// The admission moved this Envoy's count past a tenth of an RPM/TPM limit: in xDS mode
    /// the fleet should hear of it now ([`limits::crosses_tenth`]).
    pub checkpoint: bool,
}

/// Reads a scope record, applies `f`, and writes it back with CAS; retries on conflict.
fn update<H: Host, T>(host: &H, name: &str, mut f: impl FnMut(&mut ScopeState) -> T) -> Option<T> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = host.shared_get(name);
        let mut state = bytes.as_deref().map(ScopeState::decode).unwrap_or_default();
        let result = f(&mut state);
        match host.shared_set(name, &state.encode(), cas) {
            CasResult::Written => return Some(result),
            CasResult::Conflict => continue,
            CasResult::Failed => return None,
        }
    }
    None
}

/// Creates a scope's record if it doesn't exist yet (done at configure time, before traffic,
/// because two workers creating the same record concurrently could lose an update).
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
) -> Result<(Vec<Ticket>, Remaining), GatewayError> {
    let mut tickets: Vec<Ticket> = Vec::with_capacity(scopes.len());
    let mut remaining = Remaining::default();
    for scope in scopes {
        let outcome = update(host, scope.name, |state| {
            let before = (state.requests, state.tokens);
            let admitted = limits::admit(state, &scope.limits, scope.kind, now_ms, est_tokens, max_cost_nanos);
            let checkpoint = limits::crosses_tenth(scope.limits.rpm, before.0, state.requests)
                || limits::crosses_tenth(scope.limits.tpm, before.1, state.tokens);
            admitted.map(|(reservation, rem)| (reservation, rem, checkpoint))
        });
        let result = outcome.unwrap_or(Err(GatewayError::Internal { detail: "shared counters unavailable" }));
        match result {
            Ok((reservation, rem, checkpoint)) => {
                remaining.requests = tighter(remaining.requests, rem.requests);
                remaining.tokens = tighter(remaining.tokens, rem.tokens);
                tickets.push(Ticket { name: scope.name.to_owned(), limits: scope.limits, reservation, checkpoint });
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
        update(host, &t.name, |state| limits::settle(state, &t.limits, now_ms, &t.reservation, tokens, cost_nanos))
            .is_some()
    })
}

/// Gives back reservations that will not be used (a scope refused after earlier ones admitted).
pub fn release_all<H: Host>(host: &H, tickets: &[Ticket], now_ms: u64) {
    for t in tickets {
        update(host, &t.name, |state| limits::release(state, &t.limits, now_ms, &t.reservation));
    }
}

/// Stores what the other Envoys of the fleet counted on a scope in `window` (the singleton,
/// from a sync answer); the workers' admissions count it against the limits.
pub fn set_remote<H: Host>(host: &H, name: &str, window: u64, requests: u64, tokens: u64) -> bool {
    update(host, name, |state| state.set_remote(window, requests, tokens)).is_some()
}

/// Stores the fleet's totals on a scope that came with a key lookup (see
/// `ScopeState::set_fleet_total`).
pub fn set_fleet_total<H: Host>(host: &H, name: &str, window: u64, requests: u64, tokens: u64) -> bool {
    update(host, name, |state| state.set_fleet_total(window, requests, tokens)).is_some()
}

/// This Envoy's own requests and tokens on a scope in `window` (what the singleton reports).
pub fn local_counts<H: Host>(host: &H, name: &str, window: u64) -> (u64, u64) {
    host.shared_get(name).0.as_deref().map(ScopeState::decode).unwrap_or_default().local_counts(window)
}
