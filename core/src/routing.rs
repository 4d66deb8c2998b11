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
    fn litellm_weight_precedence() {
        assert_eq!(shuffle_weight(Some(2), Some(100), None), 2);
        assert_eq!(shuffle_weight(None, Some(100), Some(5)), 100);
        assert_eq!(shuffle_weight(None, None, Some(5_000_000_000)), u32::MAX);
        assert_eq!(shuffle_weight(None, None, None), 1);
    }
}
