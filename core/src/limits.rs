//! Rate-limit windows and budget counters of one scope (a key, a team, a key × model).
//!
//! A scope's whole state is one small record ([`ScopeState`], 96 bytes) so the filter can keep it
//! in one shared-data entry and update it with one compare-and-swap: requests and tokens in the
//! current minute, spend and in-flight reservations in the current budget window, and requests
//! in flight now (LiteLLM's `max_parallel_requests`). The functions here are the pure
//! transitions; the filter supplies the CAS loop.
//!
//! Requests in flight are counted by the lease epoch they started in (an epoch is as long as
//! the longest a request can take: the route's timeout, plus a margin), the current epoch's and
//! the previous one's: a request ends within its lease, so a count two epochs old is of
//! requests that have all ended. A slot a worker never gave back (a wasm VM that died with
//! requests under way) is therefore forgotten within two leases, never held for ever.
//!
//! RPM/TPM use fixed one-minute windows aligned to the epoch (LiteLLM's semantics); exact across
//! Envoy workers because every update is a CAS on the shared record.
//!
//! With a control plane, the record also holds what the *other* Envoys of the fleet counted in
//! the same window (`remote_*`, written by the singleton from its periodic sync, see
//! [`crate::fleet`]); admission counts them against the limit too. They lag by one sync, which
//! is the fleet's documented error bound (ARCHITECTURE.md, "Limits across a fleet").

use crate::error::{GatewayError, LimitKind, LimitScope};
use crate::time::BudgetDuration;

pub const WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_budget_nanos: Option<u64>,
    pub budget_duration: Option<BudgetDuration>,
    /// LiteLLM's `max_parallel_requests`: the scope's requests in flight at once.
    pub max_parallel: Option<u64>,
    /// How long one lease epoch of requests in flight lasts ([`parallel_lease_ms`]).
    pub parallel_lease_ms: u64,
}

/// Added to the route's timeout for a request's lease: the time a request spends in the filter
/// before the router's timer starts (a key lookup, the body arriving).
const PARALLEL_LEASE_MARGIN_MS: u64 = 60_000;

/// The lease of a request in flight, from the route's timeout (which bounds how long the
/// router waits for a whole answer, streams included).
pub const fn parallel_lease_ms(route_timeout_ms: u64) -> u64 {
    route_timeout_ms.saturating_add(PARALLEL_LEASE_MARGIN_MS)
}

impl Default for ScopeLimits {
    fn default() -> Self {
        Self::new(None, None, None, None)
    }
}

impl ScopeLimits {
    pub const fn new(
        rpm: Option<u64>,
        tpm: Option<u64>,
        max_budget_nanos: Option<u64>,
        budget_duration: Option<BudgetDuration>,
    ) -> Self {
        Self {
            rpm,
            tpm,
            max_budget_nanos,
            budget_duration,
            max_parallel: None,
            parallel_lease_ms: parallel_lease_ms(crate::config::DEFAULT_ROUTE_TIMEOUT_MS),
        }
    }

    /// The same limits with a parallel-request limit, leased for `lease_ms`.
    pub fn with_parallel(self, max_parallel: Option<u64>, lease_ms: u64) -> Self {
        Self { max_parallel, parallel_lease_ms: lease_ms, ..self }
    }

    /// A scope with no limit needs no counter at all (and costs no host call).
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_budget_nanos.is_none() && self.max_parallel.is_none()
    }

    fn budget_period(&self, now_ms: u64) -> u64 {
        self.budget_duration.map_or(0, |d| d.period(now_ms))
    }
}

/// The shared counters of one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeState {
    /// Minute index (`now_ms / 60_000`) the request and token counts belong to.
    pub window: u64,
    pub requests: u64,
    pub tokens: u64,
    /// Budget window index ([`BudgetDuration::period`]; 0 when the budget never resets).
    pub period: u64,
    pub spend_nanos: u64,
    /// Estimated cost of admitted requests that have not settled yet.
    pub reserved_nanos: u64,
    /// The minute `remote_requests`/`remote_tokens` belong to; other minutes' are ignored.
    pub remote_window: u64,
    /// Requests and tokens the other Envoys of the fleet counted in `remote_window`.
    pub remote_requests: u64,
    pub remote_tokens: u64,
    /// The lease epoch (`now_ms / parallel_lease_ms`) `parallel_current` counts in.
    pub parallel_epoch: u64,
    /// Requests in flight that started in `parallel_epoch`, and in the epoch before it.
    pub parallel_current: u64,
    pub parallel_previous: u64,
}

pub const STATE_LEN: usize = 96;

impl ScopeState {
    pub fn encode(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        let fields = [
            self.window,
            self.requests,
            self.tokens,
            self.period,
            self.spend_nanos,
            self.reserved_nanos,
            self.remote_window,
            self.remote_requests,
            self.remote_tokens,
            self.parallel_epoch,
            self.parallel_current,
            self.parallel_previous,
        ];
        for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a stored record; anything that isn't one (absent, truncated) is a fresh state.
    pub fn decode(bytes: &[u8]) -> Self {
        if bytes.len() != STATE_LEN {
            return Self::default();
        }
        let mut f = bytes.chunks_exact(8).map(|c| c.try_into().map(u64::from_le_bytes).unwrap_or(0));
        let mut next = || f.next().unwrap_or(0);
        Self {
            window: next(),
            requests: next(),
            tokens: next(),
            period: next(),
            spend_nanos: next(),
            reserved_nanos: next(),
            remote_window: next(),
            remote_requests: next(),
            remote_tokens: next(),
            parallel_epoch: next(),
            parallel_current: next(),
            parallel_previous: next(),
        }
    }

    /// Requests of this scope in flight, as last counted (not rolled to the current epoch:
    /// what a slot's eviction must not lose, read without the scope's limits).
    pub fn in_flight(&self) -> u64 {
        self.parallel_current.saturating_add(self.parallel_previous)
    }

    /// Moves the in-flight counts to the lease epoch of `now_ms`: the current epoch's become
    /// the previous one's, and counts of older epochs are dropped (their requests have ended).
    fn roll_parallel(&mut self, lease_ms: u64, now_ms: u64) {
        let epoch = now_ms / lease_ms.max(1);
        if epoch <= self.parallel_epoch {
            return;
        }
        self.parallel_previous = if epoch == self.parallel_epoch.saturating_add(1) { self.parallel_current } else { 0 };
        self.parallel_current = 0;
        self.parallel_epoch = epoch;
    }

    /// A request that started in lease epoch `started` is no longer in flight.
    fn end_parallel(&mut self, lease_ms: u64, now_ms: u64, started: u64) {
        self.roll_parallel(lease_ms, now_ms);
        if started == self.parallel_epoch {
            self.parallel_current = self.parallel_current.saturating_sub(1);
        } else if started.saturating_add(1) == self.parallel_epoch {
            self.parallel_previous = self.parallel_previous.saturating_sub(1);
        }
    }

    /// What the other Envoys counted in the current window (nothing if the last sync was for
    /// an older one).
    fn others(&self) -> (u64, u64) {
        if self.remote_window == self.window { (self.remote_requests, self.remote_tokens) } else { (0, 0) }
    }

    /// This Envoy's own requests and tokens in `window` (what the singleton reports).
    pub fn local_counts(&self, window: u64) -> (u64, u64) {
        if self.window == window { (self.requests, self.tokens) } else { (0, 0) }
    }

    /// Makes `window` the record's minute if it is not older (a newer one starts the local
    /// counts afresh); false for a minute the record has already left.
    fn move_to_window(&mut self, window: u64) -> bool {
        if window < self.window {
            return false;
        }
        if window > self.window {
            self.window = window;
            self.requests = 0;
            self.tokens = 0;
        }
        true
    }

    /// Stores the fleet's totals for `window` that came with a key lookup. They include what
    /// this Envoy itself last reported, so only the part above its own counts is the others';
    /// a sync's figure for the same minute is kept if it is higher.
    pub fn set_fleet_total(&mut self, window: u64, requests: u64, tokens: u64) {
        if !self.move_to_window(window) {
            return;
        }
        // The record is in `window` now: `others` is what a sync already said of it.
        let known = self.others();
        self.remote_window = window;
        self.remote_requests = known.0.max(requests.saturating_sub(self.requests));
        self.remote_tokens = known.1.max(tokens.saturating_sub(self.tokens));
    }

    /// Stores the fleet's counts for `window` from a sync answer. An answer for a window this
    /// record has already left is ignored; one for a newer window rolls the local counts too.
    pub fn set_remote(&mut self, window: u64, requests: u64, tokens: u64) {
        if !self.move_to_window(window) {
            return;
        }
        self.remote_window = window;
        self.remote_requests = requests;
        self.remote_tokens = tokens;
    }

    fn roll(&mut self, limits: &ScopeLimits, now_ms: u64) {
        let window = now_ms / WINDOW_MS;
        if window != self.window {
            self.window = window;
            self.requests = 0;
            self.tokens = 0;
        }
        let period = limits.budget_period(now_ms);
        if period != self.period {
            // Reservations of requests still in flight carry over; only settled spend resets.
            self.period = period;
            self.spend_nanos = 0;
        }
    }
}

/// What an admission reserved, needed to settle or release it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub window: u64,
    pub tokens: u64,
    pub cost_nanos: u64,
    /// The lease epoch of the parallel-request slot the request holds, if it holds one.
    pub parallel_epoch: Option<u64>,
}

/// How a request is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A request arriving.
    New,
    /// The next pass of a request already admitted (a failover): it takes a parallel slot (it
    /// is in flight) but is not refused for one, as the request was admitted with its first.
    Continuing,
}

/// Remaining allowance after an admission, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
}

fn retry_after_secs(now_ms: u64) -> u64 {
    let into_window = now_ms % WINDOW_MS;
    (WINDOW_MS - into_window).div_ceil(1000).max(1)
}

/// Admits one request against a scope, or says why not.
///
/// RPM: admitted while `requests < rpm`. TPM: the request's estimated tokens are reserved and
/// must fit (`tokens + estimate <= tpm`), then corrected to the real count at settlement.
/// Budget: admitted while `spend + reserved < max_budget`, and the request's maximum cost is
/// reserved, so concurrent requests overspend by at most one request's maximum cost.
/// Parallel: admitted while fewer than `max_parallel` requests are in flight; the slot is held
/// until the request is settled or released.
pub fn admit(
    state: &mut ScopeState,
    limits: &ScopeLimits,
    scope: LimitScope,
    now_ms: u64,
    est_tokens: u64,
    max_cost_nanos: u64,
) -> Result<(Reservation, Remaining), GatewayError> {
    admit_as(state, limits, scope, now_ms, est_tokens, max_cost_nanos, Admission::New)
}

/// [`admit`], for a request arriving or continuing ([`Admission`]).
pub fn admit_as(
    state: &mut ScopeState,
    limits: &ScopeLimits,
    scope: LimitScope,
    now_ms: u64,
    est_tokens: u64,
    max_cost_nanos: u64,
    admission: Admission,
) -> Result<(Reservation, Remaining), GatewayError> {
    state.roll(limits, now_ms);
    let (other_requests, other_tokens) = state.others();
    if let Some(rpm) = limits.rpm
        && state.requests.saturating_add(other_requests) >= rpm
    {
        return Err(GatewayError::RateLimited {
            scope,
            kind: LimitKind::Requests,
            limit: rpm,
            retry_after_secs: retry_after_secs(now_ms),
        });
    }
    if let Some(tpm) = limits.tpm
        && state.tokens.saturating_add(other_tokens).saturating_add(est_tokens) > tpm
    {
        return Err(GatewayError::RateLimited {
            scope,
            kind: LimitKind::Tokens,
            limit: tpm,
            retry_after_secs: retry_after_secs(now_ms),
        });
    }
    if let Some(max) = limits.max_budget_nanos {
        let committed = state.spend_nanos.saturating_add(state.reserved_nanos);
        if committed >= max {
            return Err(GatewayError::BudgetExceeded {
                scope,
                spend_usd: crate::cost::nanos_to_usd(state.spend_nanos),
                max_budget_usd: crate::cost::nanos_to_usd(max),
            });
        }
    }
    if let Some(max) = limits.max_parallel {
        state.roll_parallel(limits.parallel_lease_ms, now_ms);
        if admission == Admission::New && state.in_flight() >= max {
            return Err(GatewayError::ParallelLimitReached { scope, limit: max });
        }
    }
    state.requests = state.requests.saturating_add(1);
    let parallel_epoch = limits.max_parallel.map(|_| {
        state.parallel_current = state.parallel_current.saturating_add(1);
        state.parallel_epoch
    });
    let tokens = if limits.tpm.is_some() { est_tokens } else { 0 };
    state.tokens = state.tokens.saturating_add(tokens);
    let cost_nanos = if limits.max_budget_nanos.is_some() { max_cost_nanos } else { 0 };
    state.reserved_nanos = state.reserved_nanos.saturating_add(cost_nanos);
    let remaining = Remaining {
        requests: limits.rpm.map(|l| (l, l.saturating_sub(state.requests.saturating_add(other_requests)))),
        tokens: limits.tpm.map(|l| (l, l.saturating_sub(state.tokens.saturating_add(other_tokens)))),
    };
    Ok((Reservation { window: state.window, tokens, cost_nanos, parallel_epoch }, remaining))
}

/// The tokens a scope counted this minute (this Envoy's and the fleet's), if one more request
/// of `est_tokens` fits its limits now; None when it does not. What `usage-based-routing-v2`
/// compares deployments by, read without changing the record.
pub fn usage_if_room(state: &ScopeState, limits: &ScopeLimits, now_ms: u64, est_tokens: u64) -> Option<u64> {
    let mut trial = *state;
    let (reservation, _) = admit(&mut trial, limits, LimitScope::Deployment, now_ms, est_tokens, 0).ok()?;
    let (_, other_tokens) = trial.others();
    Some(trial.tokens.saturating_sub(reservation.tokens).saturating_add(other_tokens))
}

/// Whether an admission moved this Envoy's own count past a tenth of `limit`: the points at
/// which the fleet hears of it at once (an immediate sync) rather than at the next periodic
/// one, so a burst is seen by the other Envoys while it is still under way.
pub fn crosses_tenth(limit: Option<u64>, before: u64, after: u64) -> bool {
    let Some(limit) = limit else { return false };
    let step = (limit / 10).max(1);
    before / step != after / step
}

/// Settles an admitted request with its real token count and cost.
pub fn settle(
    state: &mut ScopeState,
    limits: &ScopeLimits,
    now_ms: u64,
    reservation: &Reservation,
    tokens: u64,
    cost_nanos: u64,
) {
    state.roll(limits, now_ms);
    if limits.tpm.is_some() {
        if state.window == reservation.window {
            state.tokens = state.tokens.saturating_sub(reservation.tokens);
        }
        state.tokens = state.tokens.saturating_add(tokens);
    }
    state.reserved_nanos = state.reserved_nanos.saturating_sub(reservation.cost_nanos);
    if limits.max_budget_nanos.is_some() {
        state.spend_nanos = state.spend_nanos.saturating_add(cost_nanos);
    }
    if let Some(started) = reservation.parallel_epoch {
        state.end_parallel(limits.parallel_lease_ms, now_ms, started);
    }
}

/// Undoes an admission that did not go ahead (another scope refused the request).
pub fn release(state: &mut ScopeState, limits: &ScopeLimits, now_ms: u64, reservation: &Reservation) {
    state.roll(limits, now_ms);
    if state.window == reservation.window {
        state.requests = state.requests.saturating_sub(1);
        state.tokens = state.tokens.saturating_sub(reservation.tokens);
    }
    state.reserved_nanos = state.reserved_nanos.saturating_sub(reservation.cost_nanos);
    if let Some(started) = reservation.parallel_epoch {
        state.end_parallel(limits.parallel_lease_ms, now_ms, started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_341_600_000; // a minute boundary

    fn rpm(n: u64) -> ScopeLimits {
        ScopeLimits::new(Some(n), None, None, None)
    }

    #[test]
    fn usage_if_room_reads_a_deployments_use_and_its_room_without_changing_it() {
        let limits = ScopeLimits::new(Some(2), Some(100), None, None);
        let mut s = ScopeState::default();
        assert_eq!(usage_if_room(&s, &limits, T0, 10), Some(0));
        admit(&mut s, &limits, LimitScope::Deployment, T0, 30, 0).unwrap();
        let before = s;
        assert_eq!(usage_if_room(&s, &limits, T0 + 1, 10), Some(30));
        assert_eq!(s, before, "only read");
        assert_eq!(usage_if_room(&s, &limits, T0 + 1, 71), None, "30 + 71 > tpm 100");
        admit(&mut s, &limits, LimitScope::Deployment, T0, 10, 0).unwrap();
        assert_eq!(usage_if_room(&s, &limits, T0 + 2, 1), None, "rpm 2 reached");
        assert_eq!(usage_if_room(&s, &limits, T0 + 60_000, 1), Some(0), "a new minute");
    }

    #[test]
    fn state_round_trips_and_garbage_is_fresh() {
        let s = ScopeState {
            window: 1,
            requests: 2,
            tokens: 3,
            period: 4,
            spend_nanos: 5,
            reserved_nanos: 6,
            remote_window: 7,
            remote_requests: 8,
            remote_tokens: 9,
            parallel_epoch: 10,
            parallel_current: 11,
            parallel_previous: 12,
        };
        assert_eq!(ScopeState::decode(&s.encode()), s);
        assert_eq!(ScopeState::decode(b"short"), ScopeState::default());
    }

    #[test]
    fn rpm_admits_exactly_n_per_window() {
        let limits = rpm(3);
        let mut s = ScopeState::default();
        for _ in 0..3 {
            admit(&mut s, &limits, LimitScope::Key, T0 + 10, 0, 0).unwrap();
        }
        let err = admit(&mut s, &limits, LimitScope::Key, T0 + 20_000, 0, 0).unwrap_err();
        assert_eq!(
            err,
            GatewayError::RateLimited {
                scope: LimitScope::Key,
                kind: LimitKind::Requests,
                limit: 3,
                retry_after_secs: 40
            }
        );
        // The next minute starts afresh.
        let (_, rem) = admit(&mut s, &limits, LimitScope::Key, T0 + 60_000, 0, 0).unwrap();
        assert_eq!(rem.requests, Some((3, 2)));
    }

    #[test]
    fn tpm_reserves_the_estimate_and_settles_to_the_real_count() {
        let limits = ScopeLimits::new(None, Some(100), None, None);
        let mut s = ScopeState::default();
        let (r, rem) = admit(&mut s, &limits, LimitScope::Team, T0, 40, 0).unwrap();
        assert_eq!(rem.tokens, Some((100, 60)));
        assert!(admit(&mut s, &limits, LimitScope::Team, T0, 61, 0).is_err());
        settle(&mut s, &limits, T0 + 5, &r, 90, 0);
        assert_eq!(s.tokens, 90);
        assert!(admit(&mut s, &limits, LimitScope::Team, T0, 11, 0).is_err());
        admit(&mut s, &limits, LimitScope::Team, T0, 10, 0).unwrap();
    }

    #[test]
    fn settling_in_a_later_window_counts_there() {
        let limits = ScopeLimits::new(None, Some(100), None, None);
        let mut s = ScopeState::default();
        let (r, _) = admit(&mut s, &limits, LimitScope::Key, T0 + 59_000, 50, 0).unwrap();
        settle(&mut s, &limits, T0 + 61_000, &r, 30, 0);
        assert_eq!(s.tokens, 30);
    }

    #[test]
    fn budget_overspend_is_bounded_by_one_reservation() {
        let max = 1_000;
        let limits = ScopeLimits::new(None, None, Some(max), None);
        let mut s = ScopeState::default();
        // Many concurrent admissions, each reserving at most 300: only those that fit start.
        let mut admitted = Vec::new();
        while let Ok((r, _)) = admit(&mut s, &limits, LimitScope::Key, T0, 0, 300) {
            admitted.push(r);
        }
        assert_eq!(admitted.len(), 4); // 0, 300, 600, 900 < 1000
        for r in &admitted {
            settle(&mut s, &limits, T0, r, 0, 300);
        }
        assert!(s.spend_nanos <= max + 300);
        assert_eq!(s.reserved_nanos, 0);
        assert!(matches!(admit(&mut s, &limits, LimitScope::Key, T0, 0, 1), Err(GatewayError::BudgetExceeded { .. })));
    }

    #[test]
    fn budget_resets_once_per_window_and_keeps_reservations() {
        let limits = ScopeLimits::new(None, None, Some(100), BudgetDuration::parse("1d"));
        let mut s = ScopeState::default();
        let (r1, _) = admit(&mut s, &limits, LimitScope::Key, T0, 0, 10).unwrap();
        let (r2, _) = admit(&mut s, &limits, LimitScope::Key, T0, 0, 10).unwrap();
        settle(&mut s, &limits, T0, &r1, 0, 150);
        assert!(admit(&mut s, &limits, LimitScope::Key, T0 + 1, 0, 10).is_err());
        let next_day = T0 + 86_400_000;
        admit(&mut s, &limits, LimitScope::Key, next_day, 0, 10).unwrap();
        assert_eq!(s.spend_nanos, 0);
        assert_eq!(s.reserved_nanos, 20); // r2 still in flight + the new one
        settle(&mut s, &limits, next_day, &r2, 0, 5);
        assert_eq!(s.spend_nanos, 5);
    }

    #[test]
    fn parallel_requests_are_admitted_up_to_the_limit_and_each_end_frees_a_slot() {
        let limits = ScopeLimits::default().with_parallel(Some(2), 600_000);
        let mut s = ScopeState::default();
        let (a, _) = admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).unwrap();
        let (b, _) = admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).unwrap();
        let refused = admit(&mut s, &limits, LimitScope::Key, T0 + 1, 0, 0).unwrap_err();
        assert_eq!(refused, GatewayError::ParallelLimitReached { scope: LimitScope::Key, limit: 2 });
        assert_eq!(refused.status(), 429);
        assert!(refused.message().starts_with("Max parallel request limit reached"), "LiteLLM's words");
        // However a request ends (answered, or released unanswered), its slot is free again.
        settle(&mut s, &limits, T0 + 2, &a, 10, 10);
        let (c, _) = admit(&mut s, &limits, LimitScope::Key, T0 + 3, 0, 0).unwrap();
        release(&mut s, &limits, T0 + 4, &b);
        admit(&mut s, &limits, LimitScope::Key, T0 + 5, 0, 0).unwrap();
        assert!(admit(&mut s, &limits, LimitScope::Key, T0 + 6, 0, 0).is_err());
        // A failover's next pass is never refused: its request was admitted; it holds a slot.
        let (d, _) = admit_as(&mut s, &limits, LimitScope::Key, T0 + 7, 0, 0, Admission::Continuing).unwrap();
        assert_eq!(s.in_flight(), 3);
        release(&mut s, &limits, T0 + 8, &c);
        release(&mut s, &limits, T0 + 9, &d);
        assert_eq!(s.in_flight(), 1);
    }

    /// A slot never given back (its worker died) is forgotten within two leases; a request
    /// that ends in the lease after its own still frees its slot, and one ending later than
    /// that frees nothing twice.
    #[test]
    fn a_lost_parallel_slot_is_forgotten_within_two_leases() {
        let lease = 600_000;
        let limits = ScopeLimits::default().with_parallel(Some(1), lease);
        let start = T0 - T0 % lease;
        let mut s = ScopeState::default();
        let (_lost, _) = admit(&mut s, &limits, LimitScope::Key, start + lease - 1, 0, 0).unwrap();
        assert!(admit(&mut s, &limits, LimitScope::Key, start + lease, 0, 0).is_err(), "still leased");
        assert!(admit(&mut s, &limits, LimitScope::Key, start + 2 * lease - 1, 0, 0).is_err(), "still leased");
        let (late, _) = admit(&mut s, &limits, LimitScope::Key, start + 2 * lease, 0, 0).unwrap();
        // Ended in the next lease: counted off the previous epoch.
        settle(&mut s, &limits, start + 3 * lease - 1, &late, 0, 0);
        assert_eq!(s.in_flight(), 0);
        let (very_late, _) = admit(&mut s, &limits, LimitScope::Key, start + 3 * lease, 0, 0).unwrap();
        let (other, _) =
            admit_as(&mut s, &limits, LimitScope::Key, start + 4 * lease, 0, 0, Admission::Continuing).unwrap();
        // Two leases on: the first's count is gone already; its end takes nothing from the other.
        release(&mut s, &limits, start + 5 * lease, &very_late);
        assert_eq!(s.in_flight(), 1);
        release(&mut s, &limits, start + 5 * lease, &other);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn release_undoes_an_admission() {
        let limits = ScopeLimits::new(Some(1), Some(100), Some(100), None);
        let mut s = ScopeState::default();
        let (r, _) = admit(&mut s, &limits, LimitScope::Key, T0, 10, 10).unwrap();
        release(&mut s, &limits, T0, &r);
        assert_eq!((s.requests, s.tokens, s.reserved_nanos), (0, 0, 0));
        admit(&mut s, &limits, LimitScope::Key, T0, 10, 10).unwrap();
    }

    #[test]
    fn the_fleets_counts_limit_this_envoy_in_their_window_only() {
        let limits = ScopeLimits::new(Some(10), Some(1_000), None, None);
        let mut s = ScopeState::default();
        admit(&mut s, &limits, LimitScope::Key, T0, 100, 0).unwrap();
        let window = T0 / WINDOW_MS;
        // The other Envoys used 8 requests and 850 tokens this minute: one request fits, and
        // only if its estimate fits in the 50 tokens left.
        s.set_remote(window, 8, 850);
        assert_eq!(s.local_counts(window), (1, 100), "the remote counts are not this Envoy's");
        assert!(matches!(
            admit(&mut s, &limits, LimitScope::Key, T0 + 1, 51, 0),
            Err(GatewayError::RateLimited { kind: LimitKind::Tokens, .. })
        ));
        let (_, rem) = admit(&mut s, &limits, LimitScope::Key, T0 + 1, 50, 0).unwrap();
        assert_eq!((rem.requests, rem.tokens), (Some((10, 0)), Some((1_000, 0))));
        assert!(matches!(
            admit(&mut s, &limits, LimitScope::Key, T0 + 2, 0, 0),
            Err(GatewayError::RateLimited { kind: LimitKind::Requests, .. })
        ));
        // The next minute starts afresh, though no sync has said so yet.
        admit(&mut s, &limits, LimitScope::Key, T0 + WINDOW_MS, 0, 0).unwrap();
        // A late answer for the minute that ended changes nothing.
        s.set_remote(window, 100, 100);
        assert_eq!(s.others(), (0, 0));
        assert_eq!(s.local_counts(window + 1), (1, 0));
    }

    #[test]
    fn a_looked_up_total_counts_only_what_is_not_this_envoys_own() {
        let limits = rpm(10);
        let window = T0 / WINDOW_MS;
        let mut s = ScopeState::default();
        // First sight: the whole fleet total is the others'.
        s.set_fleet_total(window, 6, 600);
        assert_eq!((s.remote_requests, s.remote_tokens), (6, 600));
        admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).unwrap();
        admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).unwrap();
        // Looked up again later: the total includes this Envoy's own 2, which are not remote;
        // a sync's higher figure for the minute stands.
        s.set_fleet_total(window, 7, 0);
        assert_eq!(s.remote_requests, 6);
        s.set_fleet_total(window, 9, 0);
        assert_eq!(s.remote_requests, 7);
        admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).unwrap();
        assert!(admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).is_err());
        // A total for a minute already over changes nothing.
        s.set_fleet_total(window - 1, 100, 0);
        assert_eq!(s.remote_requests, 7);
    }

    #[test]
    fn an_answer_for_a_newer_window_rolls_the_record() {
        let limits = rpm(5);
        let mut s = ScopeState::default();
        admit(&mut s, &limits, LimitScope::Key, T0, 0, 0).unwrap();
        let next = T0 / WINDOW_MS + 1;
        s.set_remote(next, 5, 0);
        assert_eq!(s.local_counts(next), (0, 0));
        assert!(admit(&mut s, &limits, LimitScope::Key, T0 + WINDOW_MS, 0, 0).is_err());
    }

    #[test]
    fn every_tenth_of_a_limit_is_a_checkpoint() {
        let crossings = (0..100).filter(|n| crosses_tenth(Some(60), *n, n + 1)).count();
        assert_eq!(crossings, 16, "60 rpm: every 6th request, up to 100");
        assert!(crosses_tenth(Some(5), 2, 3), "limits under 10: every request");
        assert!(crosses_tenth(Some(1_000), 90, 130), "a token estimate may jump past one");
        assert!(!crosses_tenth(Some(1_000), 101, 150));
        assert!(!crosses_tenth(None, 0, 1_000));
    }

    #[test]
    fn unlimited_scopes_reserve_nothing() {
        let limits = ScopeLimits::default();
        assert!(limits.is_unlimited());
        let mut s = ScopeState::default();
        let (r, rem) = admit(&mut s, &limits, LimitScope::Key, T0, 10, 10).unwrap();
        assert_eq!((r.tokens, r.cost_nanos), (0, 0));
        assert_eq!(rem, Remaining::default());
    }
}
