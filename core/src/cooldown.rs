//! Cooldown (LiteLLM's `allowed_fails` and `cooldown_time`): a deployment that failed more than
//! `allowed_fails` times within a minute is out of its group's rotation for `cooldown_time`, on
//! every worker (its record is in shared data). As in LiteLLM, the only deployment of a group is
//! never cooled down: there would be nothing to route to instead. Pure: time is an argument.

use serde::{Deserialize, Serialize};

/// LiteLLM's defaults: 3 failures a minute allowed, 5 seconds out.
pub const DEFAULT_ALLOWED_FAILS: u32 = 3;
pub const DEFAULT_COOLDOWN_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CooldownPolicy {
    /// Off with `disable_cooldowns: true`.
    pub enabled: bool,
    /// Failures within a minute a deployment may have; one more cools it down.
    pub allowed_fails: u32,
    pub cooldown_ms: u64,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy { enabled: true, allowed_fails: DEFAULT_ALLOWED_FAILS, cooldown_ms: DEFAULT_COOLDOWN_MS }
    }
}

/// Whether a provider's answer counts against its deployment (LiteLLM cools down on these: rate
/// limits, authentication and not-found errors, timeouts, server errors; a bad request is the
/// client's).
pub fn is_failure(status: u16) -> bool {
    matches!(status, 401 | 404 | 408 | 429) || status >= 500
}

/// One deployment's record in shared data (16 bytes): the minute its failures are counted in,
/// their number, and when its cooldown ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CooldownRecord {
    pub minute: u32,
    pub fails: u32,
    pub cooled_until_ms: u64,
}

impl crate::load::SharedRecord for CooldownRecord {
    const KIND: &'static str = "cd";

    fn decode(bytes: &[u8]) -> Self {
        CooldownRecord::decode(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        CooldownRecord::encode(self).to_vec()
    }
}

impl CooldownRecord {
    pub const LEN: usize = 16;

    /// An absent or malformed record is a clean one.
    pub fn decode(bytes: &[u8]) -> Self {
        let word = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let long = bytes.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        match (bytes.len(), word(0), word(4), long) {
            (Self::LEN, Some(minute), Some(fails), Some(cooled_until_ms)) => {
                CooldownRecord { minute, fails, cooled_until_ms }
            }
            _ => CooldownRecord::default(),
        }
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.minute.to_le_bytes());
        out[4..8].copy_from_slice(&self.fails.to_le_bytes());
        out[8..].copy_from_slice(&self.cooled_until_ms.to_le_bytes());
        out
    }

    /// Counts `failures` at `now_ms`; true when this put the deployment in cooldown (its count
    /// then starts again, so the next cooldown needs as many failures again). Failures while it
    /// cools down (requests already under way) are not counted.
    pub fn record_failures(&mut self, policy: &CooldownPolicy, now_ms: u64, failures: u32) -> bool {
        if self.cooled(now_ms) {
            return false;
        }
        let minute = u32::try_from(now_ms / 60_000).unwrap_or(u32::MAX);
        if self.minute != minute {
            *self = CooldownRecord { minute, fails: 0, cooled_until_ms: self.cooled_until_ms };
        }
        self.fails = self.fails.saturating_add(failures);
        if self.fails > policy.allowed_fails {
            self.cooled_until_ms = now_ms.saturating_add(policy.cooldown_ms);
            self.fails = 0;
            return true;
        }
        false
    }

    /// Keeps the deployment out of rotation until at least `until_ms` (a failed health check).
    pub fn hold_until(&mut self, until_ms: u64) {
        self.cooled_until_ms = self.cooled_until_ms.max(until_ms);
    }

    pub fn cooled(&self, now_ms: u64) -> bool {
        now_ms < self.cooled_until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CooldownPolicy = CooldownPolicy { enabled: true, allowed_fails: 2, cooldown_ms: 5_000 };

    #[test]
    fn more_failures_than_allowed_in_a_minute_cool_a_deployment_down_for_its_time() {
        let mut r = CooldownRecord::default();
        let t = 120_000;
        assert!(!r.record_failures(&POLICY, t, 1));
        assert!(!r.record_failures(&POLICY, t + 10, 1));
        assert!(!r.cooled(t + 10), "two failures are allowed");
        assert!(r.record_failures(&POLICY, t + 20, 1), "the third cools it down");
        assert!(r.cooled(t + 20) && r.cooled(t + 5_019) && !r.cooled(t + 5_020));
        // Failures while cooled down do not extend it; afterwards the count starts again.
        assert!(!r.record_failures(&POLICY, t + 30, 5));
        assert_eq!(r.cooled_until_ms, t + 5_020);
        assert!(!r.record_failures(&POLICY, t + 6_000, 1));
        assert!(!r.cooled(t + 6_000));
    }

    #[test]
    fn failures_in_different_minutes_do_not_add_up() {
        let mut r = CooldownRecord::default();
        assert!(!r.record_failures(&POLICY, 59_000, 2));
        assert!(!r.record_failures(&POLICY, 61_000, 2), "a new minute, a new count");
        assert!(r.record_failures(&POLICY, 62_000, 1));
    }

    #[test]
    fn records_round_trip_and_garbage_is_clean() {
        let r = CooldownRecord { minute: 7, fails: 3, cooled_until_ms: u64::MAX - 1 };
        assert_eq!(CooldownRecord::decode(&r.encode()), r);
        assert_eq!(CooldownRecord::decode(b"short"), CooldownRecord::default());
        assert_eq!(CooldownRecord::decode(&[]), CooldownRecord::default());
    }

    #[test]
    fn which_answers_count() {
        for s in [401, 404, 408, 429, 500, 502, 503, 504] {
            assert!(is_failure(s), "{s}");
        }
        for s in [200, 201, 400, 403, 413, 422] {
            assert!(!is_failure(s), "{s}");
        }
    }
}
