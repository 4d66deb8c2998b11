//! Token usage as providers report it, normalised to one shape.

use serde::Serialize;

/// Which wire format a response is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiFormat {
    /// OpenAI chat/completions/embeddings (and OpenAI-compatible servers).
    OpenAi,
    /// Anthropic `/v1/messages`.
    Anthropic,
}

/// Normalised token counts of one request.
///
/// `prompt_tokens` counts every input token, including those read from or written to a
/// provider's prompt cache; `cached_prompt_tokens` and `cache_write_tokens` are subsets of it.
/// `completion_tokens` counts every output token, reasoning tokens included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}
