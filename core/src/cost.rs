//! Prices and cost math. Money is counted in integer nano-dollars (1e-9 USD) wherever it is
//! added up, so spend counters shared between workers never accumulate float drift.

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

pub const NANOS_PER_USD: f64 = 1e9;

/// Per-token prices of one deployment, in USD, as LiteLLM's `model_info` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    #[serde(default)]
    pub input_cost_per_token: f64,
    #[serde(default)]
    pub output_cost_per_token: f64,
    /// Price of an input token read from the provider's prompt cache (OpenAI cached_tokens,
    /// Anthropic cache_read_input_tokens). Falls back to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<f64>,
    /// Price of an input token written to the prompt cache (Anthropic cache_creation_input_tokens).
    /// Falls back to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<f64>,
}

impl Pricing {
    /// Prices must be finite and non-negative: a NaN would make every budget check pass.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("input_cost_per_token", Some(self.input_cost_per_token)),
            ("output_cost_per_token", Some(self.output_cost_per_token)),
            ("cache_read_input_token_cost", self.cache_read_input_token_cost),
            ("cache_creation_input_token_cost", self.cache_creation_input_token_cost),
        ];
        for (name, value) in all {
            if let Some(v) = value
                && (!v.is_finite() || v < 0.0)
            {
                return Err(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        Ok(())
    }

    /// Cost of a request's usage in USD.
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_prompt_tokens.min(usage.prompt_tokens);
        let writes = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let plain_input = usage.prompt_tokens - cached - writes;
        plain_input as f64 * self.input_cost_per_token
            + cached as f64 * self.cache_read_input_token_cost.unwrap_or(self.input_cost_per_token)
            + writes as f64 * self.cache_creation_input_token_cost.unwrap_or(self.input_cost_per_token)
            + usage.completion_tokens as f64 * self.output_cost_per_token
    }

    pub fn cost_nanos(&self, usage: &Usage) -> u64 {
        usd_to_nanos(self.cost_usd(usage))
    }

    /// Upper bound of a request's cost before it runs: every prompt token at the highest input
    /// price, plus the most output it may produce. Reserved against budgets at admission.
    pub fn max_cost_nanos(&self, prompt_tokens: u64, max_output_tokens: u64) -> u64 {
        let input_price = self
            .input_cost_per_token
            .max(self.cache_read_input_token_cost.unwrap_or(0.0))
            .max(self.cache_creation_input_token_cost.unwrap_or(0.0));
        usd_to_nanos(prompt_tokens as f64 * input_price + max_output_tokens as f64 * self.output_cost_per_token)
    }
}

/// USD → nano-dollars, rounded, clamped to the u64 range (NaN and negatives become 0).
pub fn usd_to_nanos(usd: f64) -> u64 {
    let nanos = (usd * NANOS_PER_USD).round();
    if nanos.is_nan() || nanos <= 0.0 {
        0
    } else if nanos >= u64::MAX as f64 {
        u64::MAX
    } else {
        nanos as u64
    }
}

pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt4o() -> Pricing {
        Pricing {
            input_cost_per_token: 2.5e-6,
            output_cost_per_token: 1e-5,
            cache_read_input_token_cost: Some(1.25e-6),
            cache_creation_input_token_cost: None,
        }
    }

    #[test]
    fn plain_usage_cost() {
        let u = Usage { prompt_tokens: 1000, completion_tokens: 100, ..Usage::default() };
        assert_eq!(gpt4o().cost_nanos(&u), 2_500_000 + 1_000_000);
    }

    #[test]
    fn cached_tokens_are_priced_at_the_cache_price() {
        let u = Usage { prompt_tokens: 1000, cached_prompt_tokens: 400, completion_tokens: 0, ..Usage::default() };
        assert_eq!(gpt4o().cost_nanos(&u), 600 * 2500 + 400 * 1250);
    }

    #[test]
    fn cache_writes_fall_back_to_the_input_price() {
        let p = Pricing { cache_creation_input_token_cost: Some(3.75e-6), ..gpt4o() };
        let u = Usage { prompt_tokens: 100, cache_write_tokens: 40, cached_prompt_tokens: 10, ..Usage::default() };
        assert_eq!(p.cost_nanos(&u), 50 * 2500 + 10 * 1250 + 40 * 3750);
        assert_eq!(gpt4o().cost_nanos(&u), 50 * 2500 + 10 * 1250 + 40 * 2500);
    }

    #[test]
    fn inconsistent_usage_does_not_underflow() {
        let u = Usage { prompt_tokens: 10, cached_prompt_tokens: 50, cache_write_tokens: 50, ..Usage::default() };
        assert_eq!(gpt4o().cost_nanos(&u), 10 * 1250);
    }

    #[test]
    fn reservation_bounds_the_real_cost() {
        let p = gpt4o();
        let max = p.max_cost_nanos(1000, 500);
        let real = p.cost_nanos(&Usage {
            prompt_tokens: 1000,
            cached_prompt_tokens: 300,
            completion_tokens: 500,
            ..Usage::default()
        });
        assert!(real <= max);
    }

    #[test]
    fn nanos_conversion_clamps() {
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(1e30), u64::MAX);
        assert_eq!(usd_to_nanos(0.1), 100_000_000);
        assert!(Pricing { input_cost_per_token: f64::NAN, ..Pricing::default() }.validate().is_err());
        assert!(Pricing { output_cost_per_token: -1.0, ..Pricing::default() }.validate().is_err());
    }
}
