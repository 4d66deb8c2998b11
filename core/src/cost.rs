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
    /// Higher prices for a request whose prompt is longer than a threshold (Gemini's and
    /// Claude's long-context prices: LiteLLM's `…_above_200k_tokens`, `…_above_128k_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPricing>,
}

/// The prices of every token of a request whose prompt (cached and cache-written tokens
/// included) is longer than `above_input_tokens`, as Google and Anthropic bill it: the whole
/// request at these prices, not only the tokens past the threshold. A cache price not given
/// here is the base one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextPricing {
    pub above_input_tokens: u64,
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<f64>,
}

impl Pricing {
    /// The prices that apply to a prompt of `prompt_tokens`: the long-context ones above their
    /// threshold, else these.
    pub fn for_prompt(&self, prompt_tokens: u64) -> Pricing {
        match self.long_context {
            Some(long) if prompt_tokens > long.above_input_tokens => Pricing {
                input_cost_per_token: long.input_cost_per_token,
                output_cost_per_token: long.output_cost_per_token,
                cache_read_input_token_cost: long.cache_read_input_token_cost.or(self.cache_read_input_token_cost),
                cache_creation_input_token_cost: long
                    .cache_creation_input_token_cost
                    .or(self.cache_creation_input_token_cost),
                long_context: None,
            },
            _ => *self,
        }
    }

    /// Prices must be finite and non-negative: a NaN would make every budget check pass.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("input_cost_per_token", Some(self.input_cost_per_token)),
            ("output_cost_per_token", Some(self.output_cost_per_token)),
            ("cache_read_input_token_cost", self.cache_read_input_token_cost),
            ("cache_creation_input_token_cost", self.cache_creation_input_token_cost),
            ("input_cost_per_token_above_…_tokens", self.long_context.map(|l| l.input_cost_per_token)),
            ("output_cost_per_token_above_…_tokens", self.long_context.map(|l| l.output_cost_per_token)),
            (
                "cache_read_input_token_cost_above_…_tokens",
                self.long_context.and_then(|l| l.cache_read_input_token_cost),
            ),
            (
                "cache_creation_input_token_cost_above_…_tokens",
                self.long_context.and_then(|l| l.cache_creation_input_token_cost),
            ),
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

    /// Cost of a request's usage in USD (at the long-context prices when its prompt is over
    /// their threshold).
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let prices = self.for_prompt(usage.prompt_tokens);
        prices.cost_at_these_prices(usage)
    }

    fn cost_at_these_prices(&self, usage: &Usage) -> f64 {
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
    /// price, plus the most output it may produce. Reserved against budgets at admission. The
    /// prompt's count is an estimate: a prompt estimated at more than half the long-context
    /// threshold is reserved at the long-context prices.
    pub fn max_cost_nanos(&self, prompt_tokens: u64, max_output_tokens: u64) -> u64 {
        let prices = self.for_prompt(prompt_tokens.saturating_mul(2));
        prices.max_cost_at_these_prices(prompt_tokens, max_output_tokens)
    }

    fn max_cost_at_these_prices(&self, prompt_tokens: u64, max_output_tokens: u64) -> u64 {
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
            long_context: None,
        }
    }

    /// Gemini 2.5 Pro's prices (per token): $1.25/$10 per million, $2.50/$15 above 200k, cached
    /// input $0.125 (above 200k: $0.25).
    fn gemini_pro() -> Pricing {
        Pricing {
            input_cost_per_token: 1.25e-6,
            output_cost_per_token: 1e-5,
            cache_read_input_token_cost: Some(1.25e-7),
            cache_creation_input_token_cost: None,
            long_context: Some(LongContextPricing {
                above_input_tokens: 200_000,
                input_cost_per_token: 2.5e-6,
                output_cost_per_token: 1.5e-5,
                cache_read_input_token_cost: Some(2.5e-7),
                cache_creation_input_token_cost: None,
            }),
        }
    }

    /// Hand-computed: at 200,000 prompt tokens the base prices; one more and every token of the
    /// request is at the long-context prices.
    #[test]
    fn a_prompt_over_the_threshold_is_billed_whole_at_the_long_context_prices() {
        let at = |prompt: u64, cached: u64| {
            gemini_pro().cost_nanos(&Usage {
                prompt_tokens: prompt,
                cached_prompt_tokens: cached,
                completion_tokens: 1000,
                ..Usage::default()
            })
        };
        // 200,000 × $1.25/M + 1,000 × $10/M = $0.25 + $0.01.
        assert_eq!(at(200_000, 0), 260_000_000);
        // 200,001 × $2.50/M + 1,000 × $15/M = $0.5000025 + $0.015.
        assert_eq!(at(200_001, 0), 515_002_500);
        // Cached tokens count towards the threshold, at the long-context cache price:
        // 100,001 × $2.50/M + 100,000 × $0.25/M + 1,000 × $15/M.
        assert_eq!(at(200_001, 100_000), 250_002_500 + 25_000_000 + 15_000_000);
        // No long-context cache price: the base one.
        let mut p = gemini_pro();
        if let Some(long) = p.long_context.as_mut() {
            long.cache_read_input_token_cost = None;
        }
        let u = Usage { prompt_tokens: 300_000, cached_prompt_tokens: 100_000, ..Usage::default() };
        assert_eq!(p.cost_nanos(&u), 500_000_000 + 12_500_000);
    }

    #[test]
    fn a_long_prompts_reservation_covers_the_long_context_price() {
        let p = gemini_pro();
        // Estimated at 150k (over half the threshold): reserved at the higher prices, which
        // covers a prompt that turns out to be over 200k.
        let max = p.max_cost_nanos(150_000, 1000);
        assert_eq!(max, 375_000_000 + 15_000_000);
        let real = p.cost_nanos(&Usage { prompt_tokens: 200_001, completion_tokens: 1000, ..Usage::default() });
        assert!(real > p.for_prompt(0).max_cost_nanos(150_000, 1000) && real <= max + 125_002_500);
        // A short prompt: the base prices.
        assert_eq!(p.max_cost_nanos(1000, 1000), 1_250_000 + 10_000_000);
        let bad = Pricing {
            long_context: Some(LongContextPricing { input_cost_per_token: f64::NAN, ..LongContextPricing::default() }),
            ..Pricing::default()
        };
        assert!(bad.validate().is_err());
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
