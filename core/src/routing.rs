//! Choosing a deployment within a model group.

/// Weighted random choice (LiteLLM's simple-shuffle). `random` is any uniformly random u64;
/// the caller supplies it so this stays deterministic under test. Candidates with weight 0 are
/// never chosen unless all are 0, in which case the choice is uniform.
pub fn choose_weighted(weights: impl Iterator<Item = u32> + Clone, random: u64) -> Option<usize> {
    let total: u64 = weights.clone().map(u64::from).sum();
    if total == 0 {
        let n = weights.count() as u64;
        return (n > 0).then(|| (random % n) as usize);
    }
    let mut point = random % total;
    for (i, w) in weights.enumerate() {
        let w = u64::from(w);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// The smallest of `values` (`f64`s compared totally), at random among equals; None when empty.
pub fn choose_least(values: impl Iterator<Item = f64> + Clone, random: u64) -> Option<usize> {
    let least = values.clone().min_by(f64::total_cmp)?;
    let ties = values.clone().filter(|v| v.total_cmp(&least).is_eq()).count() as u64;
    let nth = random % ties.max(1);
    values.enumerate().filter(|(_, v)| v.total_cmp(&least).is_eq()).nth(nth as usize).map(|(i, _)| i)
}

/// `latency-based-routing`'s settings (`routing_strategy_args`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySettings {
    /// `lowest_latency_buffer`: deployments within this fraction of the lowest latency share
    /// the traffic (0: only the lowest).
    pub buffer: f64,
    /// `ttl` (seconds in LiteLLM): a latency older than this is no longer trusted, in ms.
    pub ttl_ms: u64,
}

impl Default for LatencySettings {
    /// LiteLLM's defaults: no buffer, an hour.
    fn default() -> Self {
        LatencySettings { buffer: 0.0, ttl_ms: 3_600_000 }
    }
}

/// `latency-based-routing`: a deployment without a recent latency first (at random among
/// them, so each gets measured), else at random among those within `buffer` of the lowest.
pub fn choose_lowest_latency(latencies: &[Option<f64>], buffer: f64, random: u64) -> Option<usize> {
    let unknown = latencies.iter().filter(|l| l.is_none()).count() as u64;
    if unknown > 0 {
        let nth = (random % unknown) as usize;
        return latencies.iter().enumerate().filter(|(_, l)| l.is_none()).nth(nth).map(|(i, _)| i);
    }
    let lowest = latencies.iter().flatten().copied().min_by(f64::total_cmp)?;
    let bound = lowest * (1.0 + buffer.max(0.0));
    let within = |l: &Option<f64>| l.is_some_and(|l| l <= bound);
    let count = latencies.iter().filter(|l| within(l)).count() as u64;
    let nth = (random % count.max(1)) as usize;
    latencies.iter().enumerate().filter(|(_, l)| within(l)).nth(nth).map(|(i, _)| i)
}

/// LiteLLM's simple-shuffle weight of a deployment: `weight`, else `rpm`, else `tpm`, else 1.
pub fn shuffle_weight(weight: Option<u32>, rpm: Option<u64>, tpm: Option<u64>) -> u32 {
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    weight.or(rpm.map(clamp)).or(tpm.map(clamp)).unwrap_or(1)
}

/// A small, fast PRNG (SplitMix64) for routing choices: not for secrets.
#[derive(Debug, Clone, Copy)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_shape_the_distribution() {
        let weights = [1u32, 3, 0];
        let mut rng = SplitMix64::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[choose_weighted(weights.iter().copied(), rng.next_u64()).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        assert!((2.8..3.2).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn edge_cases() {
        assert_eq!(choose_weighted([].iter().copied(), 5), None);
        assert_eq!(choose_weighted([0u32, 0].iter().copied(), 5), Some(1));
        assert_eq!(choose_weighted([u32::MAX, u32::MAX].iter().copied(), u64::MAX), Some(1));
    }

    #[test]
    fn the_least_wins_and_ties_share() {
        assert_eq!(choose_least([3.0, 1.0, 2.0].into_iter(), 7), Some(1));
        let picks: std::collections::BTreeSet<usize> =
            (0..20).filter_map(|r| choose_least([1.0, 5.0, 1.0].into_iter(), r)).collect();
        assert_eq!(picks.into_iter().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(choose_least(std::iter::empty(), 1), None);
    }

    #[test]
    fn latency_routing_explores_then_prefers_the_fastest_within_the_buffer() {
        assert_eq!(choose_lowest_latency(&[Some(20.0), None, Some(5.0)], 0.0, 3), Some(1), "unmeasured first");
        assert_eq!(choose_lowest_latency(&[Some(200.0), Some(20.0)], 0.0, 1), Some(1));
        let picks: std::collections::BTreeSet<usize> =
            (0..20).filter_map(|r| choose_lowest_latency(&[Some(20.0), Some(21.0), Some(200.0)], 0.1, r)).collect();
        assert_eq!(picks.into_iter().collect::<Vec<_>>(), [0, 1], "21 is within 10% of 20; 200 is not");
        assert_eq!(choose_lowest_latency(&[], 0.0, 0), None);
    }

    #[test]
    fn litellm_weight_precedence() {
        assert_eq!(shuffle_weight(Some(2), Some(100), None), 2);
        assert_eq!(shuffle_weight(None, Some(100), Some(5)), 100);
        assert_eq!(shuffle_weight(None, None, Some(5_000_000_000)), u32::MAX);
        assert_eq!(shuffle_weight(None, None, None), 1);
    }
}
