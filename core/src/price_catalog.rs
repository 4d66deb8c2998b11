//! The built-in price table: prices and output limits of public models, taken as data from
//! LiteLLM's published price map (`core/data/model_prices.json`, refreshed by `cargo xtask
//! prices`, one model a line so a refresh reads as a diff). config.yaml's `model_info` prices
//! override it.
//!
//! Used where config.yaml is read (the CLI and the control plane); the filter gets prices
//! already resolved in its config, so the table is never in the wasm module.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::cost::{LongContextPricing, Pricing};

const TABLE: &str = include_str!("../data/model_prices.json");

/// One model's entry.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct CatalogPrice {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    #[serde(default)]
    pub cache_read: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    /// Long-context prices (LiteLLM's `…_above_200k_tokens`, `…_above_128k_tokens`).
    #[serde(default)]
    pub input_above_200k: Option<f64>,
    #[serde(default)]
    pub output_above_200k: Option<f64>,
    #[serde(default)]
    pub cache_read_above_200k: Option<f64>,
    #[serde(default)]
    pub cache_write_above_200k: Option<f64>,
    #[serde(default)]
    pub input_above_128k: Option<f64>,
    #[serde(default)]
    pub output_above_128k: Option<f64>,
}

impl CatalogPrice {
    pub fn pricing(&self) -> Pricing {
        Pricing {
            input_cost_per_token: self.input,
            output_cost_per_token: self.output,
            cache_read_input_token_cost: self.cache_read,
            cache_creation_input_token_cost: self.cache_write,
            long_context: self.long_context(),
        }
    }

    /// The tier above 200k prompt tokens where the table has one, else above 128k (older Gemini).
    fn long_context(&self) -> Option<LongContextPricing> {
        let tier = |above: u64, input: Option<f64>, output: Option<f64>, read: Option<f64>, write: Option<f64>| {
            (input.is_some() || output.is_some()).then(|| LongContextPricing {
                above_input_tokens: above,
                input_cost_per_token: input.unwrap_or(self.input),
                output_cost_per_token: output.unwrap_or(self.output),
                cache_read_input_token_cost: read,
                cache_creation_input_token_cost: write,
            })
        };
        tier(
            200_000,
            self.input_above_200k,
            self.output_above_200k,
            self.cache_read_above_200k,
            self.cache_write_above_200k,
        )
        .or_else(|| tier(128_000, self.input_above_128k, self.output_above_128k, None, None))
    }
}

#[derive(Deserialize)]
struct Entry {
    provider: String,
    #[serde(flatten)]
    price: CatalogPrice,
}

/// Model name → (LiteLLM provider, price). Parsed once; an unreadable table (a bad refresh,
/// caught by this module's tests) is an empty one, so every model is then "no known price".
fn table() -> &'static HashMap<String, (String, CatalogPrice)> {
    static PARSED: OnceLock<HashMap<String, (String, CatalogPrice)>> = OnceLock::new();
    PARSED.get_or_init(|| {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(TABLE).unwrap_or_default();
        raw.into_iter()
            .filter(|(name, _)| !name.starts_with('_'))
            .filter_map(|(name, v)| serde_json::from_value::<Entry>(v).ok().map(|e| (name, (e.provider, e.price))))
            .collect()
    })
}

/// The price of `model` as config.yaml names it (`litellm_params.model`, `provider/name`, or
/// `model_info.base_model`): the name as written, else the name without its provider prefix
/// when the table lists it under that provider (LiteLLM keys OpenAI and Anthropic models by
/// their bare names, Azure and Bedrock ones with their prefix).
pub fn lookup(model: &str) -> Option<CatalogPrice> {
    let table = table();
    if let Some((_, price)) = table.get(model) {
        return Some(*price);
    }
    let (provider, name) = model.split_once('/')?;
    let (listed_under, price) = table.get(name)?;
    let same_provider = listed_under == provider
        || (provider == "text-completion-openai" && listed_under == "openai")
        || (provider == "anthropic" && listed_under.starts_with("anthropic"))
        // Gemini on Vertex is listed bare, under `vertex_ai-language-models`.
        || (provider == "vertex_ai" && listed_under.starts_with("vertex_ai"));
    same_provider.then_some(*price)
}

/// The models of `provider` (as `lookup` finds them under `provider/name`) whose names
/// `pattern`'s one `*` matches (a wildcard deployment's `openai/*`: every OpenAI model), by name.
pub fn matching(provider: &str, pattern: &str) -> BTreeMap<String, CatalogPrice> {
    let prefix = format!("{provider}/");
    table()
        .keys()
        .map(|name| name.strip_prefix(&prefix).unwrap_or(name))
        .filter(|name| crate::config::wildcard_match(pattern, name).is_some())
        .filter_map(|name| Some((name.to_owned(), lookup(&format!("{prefix}{name}"))?)))
        .collect()
}

/// How many models the table has (for `sluice config check`'s summary and the tests).
pub fn len() -> usize {
    table().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_whole() {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(TABLE).unwrap_or_default();
        // Every line is a model (but the `_about` header), and every model parsed.
        assert!(len() > 1000, "{} models", len());
        assert_eq!(len(), raw.len() - 1);
    }

    #[test]
    fn models_are_found_as_config_yaml_names_them() {
        // Prices as the providers publish them (USD per token), via LiteLLM's map.
        let gpt4o = lookup("openai/gpt-4o");
        assert_eq!(gpt4o.map(|p| (p.input, p.output, p.cache_read)), Some((2.5e-6, 1e-5, Some(1.25e-6))));
        assert_eq!(lookup("gpt-4o"), gpt4o);
        let sonnet = lookup("anthropic/claude-sonnet-4-5").map(|p| (p.input, p.output, p.cache_read, p.cache_write));
        assert_eq!(sonnet, Some((3e-6, 1.5e-5, Some(3e-7), Some(3.75e-6))));
        assert_eq!(lookup("azure/gpt-4o").map(|p| p.input), Some(2.5e-6));
        let embedding = lookup("openai/text-embedding-3-small").map(|p| (p.input, p.output));
        assert_eq!(embedding, Some((2e-8, 0.0)));
        // Embedding models behind a translation are priced per input token too.
        let per_input = |m: &str| lookup(m).map(|p| (p.input, p.output));
        assert_eq!(per_input("gemini/gemini-embedding-001"), Some((1.5e-7, 0.0)));
        assert_eq!(per_input("bedrock/amazon.titan-embed-text-v2:0"), Some((2e-8, 0.0)));
        assert_eq!(per_input("bedrock/amazon.titan-embed-text-v1"), Some((1e-7, 0.0)));
        assert_eq!(per_input("bedrock/cohere.embed-english-v3"), Some((1e-7, 0.0)));
        assert_eq!(per_input("bedrock/cohere.embed-multilingual-v3"), Some((1e-7, 0.0)));
        // LiteLLM lists text-embedding-004 under Vertex only (free on Gemini's API): no price,
        // so such a deployment is flagged `price_unknown` unless its model_info prices it.
        assert_eq!(lookup("gemini/text-embedding-004"), None);
        // Vertex AI: Gemini listed bare under Vertex's own provider names, Claude with its prefix.
        assert_eq!(lookup("vertex_ai/gemini-2.5-pro").map(|p| (p.input, p.output)), Some((1.25e-6, 1e-5)));
        assert_eq!(lookup("vertex_ai/claude-3-5-haiku@20241022").map(|p| (p.input, p.output)), Some((1e-6, 5e-6)));
        // A name listed under another provider is not that provider's price.
        assert_eq!(lookup("anthropic/gpt-4o"), None);
        assert_eq!(lookup("vertex_ai/gpt-4o"), None);
        assert_eq!(lookup("openai/my-fine-tune"), None);
        assert_eq!(lookup("hosted_vllm/llama-3"), None);
    }

    /// Gemini 2.5 Pro and Claude Sonnet 4.5 cost more above 200k prompt tokens: the table
    /// keeps those prices, and a deployment's pricing carries them.
    #[test]
    fn long_context_prices_come_with_the_table() {
        let pro = lookup("gemini/gemini-2.5-pro").map(|p| p.pricing().long_context);
        assert_eq!(
            pro,
            Some(Some(LongContextPricing {
                above_input_tokens: 200_000,
                input_cost_per_token: 2.5e-6,
                output_cost_per_token: 1.5e-5,
                cache_read_input_token_cost: Some(2.5e-7),
                cache_creation_input_token_cost: None,
            }))
        );
        let sonnet = lookup("anthropic/claude-sonnet-4-5").and_then(|p| p.pricing().long_context);
        assert_eq!(
            sonnet.map(|l| (l.input_cost_per_token, l.cache_creation_input_token_cost)),
            Some((6e-6, Some(7.5e-6)))
        );
        // Most models have one price whatever the prompt.
        assert_eq!(lookup("openai/gpt-4o").map(|p| p.pricing().long_context), Some(None));
    }

    #[test]
    fn a_wildcard_finds_its_providers_models_only() {
        let openai = matching("openai", "*");
        assert_eq!(openai.get("gpt-4o").map(|p| p.input), Some(2.5e-6));
        assert!(!openai.contains_key("claude-sonnet-4-5") && !openai.keys().any(|k| k.contains('/')));
        let claude = matching("anthropic", "claude-sonnet-*");
        assert!(claude.contains_key("claude-sonnet-4-5") && claude.keys().all(|k| k.starts_with("claude-sonnet-")));
        assert!(matching("hosted_vllm", "*").is_empty());
    }
}
