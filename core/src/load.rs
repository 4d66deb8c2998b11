//! What `least-busy` and `latency-based-routing` know of a deployment: its requests in flight
//! and its recent latency, in one 24-byte shared-data record per deployment, so every worker of
//! an Envoy routes on the same numbers. Pure: time is an argument.

/// A count of requests in flight untouched for this long is not trusted: a worker that died
/// with requests under way (a VM restart) cannot leave a deployment looking busy for ever.
pub const IN_FLIGHT_TRUST_MS: u64 = 15 * 60_000;

/// Weight of a new latency sample in the running average (about the last ten count; LiteLLM
/// averages its last ten).
const LATENCY_ALPHA: f64 = 0.2;

/// A per-deployment record the filter keeps in shared data (one entry per deployment, named
/// [`crate::config::deployment_record_name`]`(KIND, id)`): its bytes, fixed-size, an absent or
/// malformed entry decoding as a clean record.
pub trait SharedRecord: Sized {
    const KIND: &'static str;
    fn decode(bytes: &[u8]) -> Self;
    fn encode(&self) -> Vec<u8>;
}

impl SharedRecord for DeploymentLoad {
    const KIND: &'static str = "ld";

    fn decode(bytes: &[u8]) -> Self {
        DeploymentLoad::decode(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        DeploymentLoad::encode(self).to_vec()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeploymentLoad {
    pub in_flight: u32,
    /// When `in_flight` last changed.
    pub in_flight_at_ms: u64,
    /// Running average latency in ms (0: no sample yet).
    pub latency_ms: f32,
    /// When the last sample came.
    pub latency_at_ms: u64,
}

impl DeploymentLoad {
    pub const LEN: usize = 24;

    /// An absent or malformed record is an idle, unmeasured deployment.
    pub fn decode(bytes: &[u8]) -> Self {
        let word = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let long = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        match (bytes.len(), word(0), word(4), long(8), long(16)) {
            (Self::LEN, Some(in_flight), Some(latency), Some(in_flight_at_ms), Some(latency_at_ms)) => {
                DeploymentLoad { in_flight, in_flight_at_ms, latency_ms: f32::from_bits(latency), latency_at_ms }
            }
            _ => DeploymentLoad::default(),
        }
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.in_flight.to_le_bytes());
        out[4..8].copy_from_slice(&self.latency_ms.to_bits().to_le_bytes());
        out[8..16].copy_from_slice(&self.in_flight_at_ms.to_le_bytes());
        out[16..].copy_from_slice(&self.latency_at_ms.to_le_bytes());
        out
    }

    /// Requests in flight, if the count is recent enough to trust.
    pub fn busy(&self, now_ms: u64) -> u32 {
        if now_ms.saturating_sub(self.in_flight_at_ms) > IN_FLIGHT_TRUST_MS { 0 } else { self.in_flight }
    }

    pub fn started(&mut self, now_ms: u64) {
        self.in_flight = self.busy(now_ms).saturating_add(1);
        self.in_flight_at_ms = now_ms;
    }

    pub fn finished(&mut self, now_ms: u64) {
        self.in_flight = self.busy(now_ms).saturating_sub(1);
        self.in_flight_at_ms = now_ms;
    }

    /// The running average, None when there is no sample younger than `ttl_ms`.
    pub fn latency(&self, now_ms: u64, ttl_ms: u64) -> Option<f64> {
        (self.latency_at_ms > 0 && now_ms.saturating_sub(self.latency_at_ms) <= ttl_ms)
            .then_some(f64::from(self.latency_ms))
    }

    /// Adds a sample; one after a gap longer than `ttl_ms` starts the average again.
    pub fn observe_latency(&mut self, sample_ms: u64, now_ms: u64, ttl_ms: u64) {
        let sample = sample_ms as f64;
        let average = match self.latency(now_ms, ttl_ms) {
            Some(old) => old + LATENCY_ALPHA * (sample - old),
            None => sample,
        };
        self.latency_ms = average as f32;
        self.latency_at_ms = now_ms.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_up_and_down_and_a_stale_count_is_not_trusted() {
        let mut l = DeploymentLoad::default();
        l.started(1_000);
        l.started(1_001);
        l.finished(1_002);
        assert_eq!(l.busy(1_003), 1);
        assert_eq!(l.busy(1_002 + IN_FLIGHT_TRUST_MS + 1), 0, "a worker died with one under way");
        l.finished(2_000);
        l.finished(2_001);
        assert_eq!(l.busy(2_002), 0, "never below zero");
    }

    #[test]
    fn latency_is_a_running_average_that_expires() {
        let mut l = DeploymentLoad::default();
        assert_eq!(l.latency(10, 1_000), None);
        l.observe_latency(100, 10, 1_000);
        assert_eq!(l.latency(20, 1_000), Some(100.0));
        l.observe_latency(200, 20, 1_000);
        assert_eq!(l.latency(30, 1_000), Some(120.0));
        assert_eq!(l.latency(2_000, 1_000), None, "older than the ttl");
        l.observe_latency(50, 2_000, 1_000);
        assert_eq!(l.latency(2_000, 1_000), Some(50.0), "starts again");
    }

    #[test]
    fn records_round_trip_and_garbage_is_idle() {
        let l = DeploymentLoad { in_flight: 3, in_flight_at_ms: 9, latency_ms: 12.5, latency_at_ms: u64::MAX };
        assert_eq!(DeploymentLoad::decode(&l.encode()), l);
        assert_eq!(DeploymentLoad::decode(b"nope"), DeploymentLoad::default());
    }
}
