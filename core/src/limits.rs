//! Rate-limit windows and budget counters of one scope (a key, a team, a key × model).
//!
//! A scope's whole state is one small record ([`ScopeState`], 48 bytes) so the filter can keep it
//! in one shared-data entry and update it with one compare-and-swap: requests and tokens in the
//! current minute, spend and in-flight reservations in the current budget window. The functions
//! here are the pure transitions; the filter supplies the CAS loop.
//!
//! RPM/TPM use fixed one-minute windows aligned to the epoch (LiteLLM's semantics); exact across
//! Envoy workers because every update is a CAS on the shared record.

use crate::error::{GatewayError, LimitKind, LimitScope};
use crate::time::BudgetDuration;

const WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_budget_nanos: Option<u64>,
    pub budget_duration: Option<BudgetDuration>,
}

impl ScopeLimits {
    pub fn new(
        rpm: Option<u64>,
        tpm: Option<u64>,
        max_budget_nanos: Option<u64>,
        budget_duration: Option<BudgetDuration>,
    ) -> Self {
        Self { rpm, tpm, max_budget_nanos, budget_duration }
    }

    /// A scope with no limit needs no counter at all (and costs no host call).
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_budget_nanos.is_none()
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
}

pub const STATE_LEN: usize = 48;

impl ScopeState {
    pub fn encode(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        let fields = [self.window, self.requests, self.tokens, self.period, self.spend_nanos, self.reserved_nanos];
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
        }
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
pub fn admit(
    state: &mut ScopeState,
    limits: &ScopeLimits,
    scope: LimitScope,
    now_ms: u64,
    est_tokens: u64,
    max_cost_nanos: u64,
) -> Result<(Reservation, Remaining), GatewayError> {
    state.roll(limits, now_ms);
    if let Some(rpm) = limits.rpm
        && state.requests >= rpm
    {
        return Err(GatewayError::RateLimited {
            scope,
            kind: LimitKind::Requests,
            limit: rpm,
            retry_after_secs: retry_after_secs(now_ms),
        });
    }
    if let Some(tpm) = limits.tpm
        && state.tokens.saturating_add(est_tokens) > tpm
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
    state.requests = state.requests.saturating_add(1);
    let tokens = if limits.tpm.is_some() { est_tokens } else { 0 };
    state.tokens = state.tokens.saturating_add(tokens);
    let cost_nanos = if limits.max_budget_nanos.is_some() { max_cost_nanos } else { 0 };
    state.reserved_nanos = state.reserved_nanos.saturating_add(cost_nanos);
    let remaining = Remaining {
        requests: limits.rpm.map(|l| (l, l.saturating_sub(state.requests))),
        tokens: limits.tpm.map(|l| (l, l.saturating_sub(state.tokens))),
    };
    Ok((Reservation { window: state.window, tokens, cost_nanos }, remaining))
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
}

/// Undoes an admission that did not go ahead (another scope refused the request).
pub fn release(state: &mut ScopeState, limits: &ScopeLimits, now_ms: u64, reservation: &Reservation) {
    state.roll(limits, now_ms);
    if state.window == reservation.window {
        state.requests = state.requests.saturating_sub(1);
        state.tokens = state.tokens.saturating_sub(reservation.tokens);
    }
    state.reserved_nanos = state.reserved_nanos.saturating_sub(reservation.cost_nanos);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_341_600_000; // a minute boundary

    fn rpm(n: u64) -> ScopeLimits {
        ScopeLimits::new(Some(n), None, None, None)
    }

    #[test]
    fn state_round_trips_and_garbage_is_fresh() {
        let s = ScopeState { window: 1, requests: 2, tokens: 3, period: 4, spend_nanos: 5, reserved_nanos: 6 };
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
    fn release_undoes_an_admission() {
        let limits = ScopeLimits::new(Some(1), Some(100), Some(100), None);
        let mut s = ScopeState::default();
        let (r, _) = admit(&mut s, &limits, LimitScope::Key, T0, 10, 10).unwrap();
        release(&mut s, &limits, T0, &r);
        assert_eq!((s.requests, s.tokens, s.reserved_nanos), (0, 0, 0));
        admit(&mut s, &limits, LimitScope::Key, T0, 10, 10).unwrap();
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
