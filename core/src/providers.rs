//! The providers a `litellm_params.model` prefix may name (`groq/llama-3.3-70b`): the wire
//! format each speaks, where it lives by default, and which environment variable holds its
//! credential when the entry names none. LiteLLM's defaults (its `get_llm_provider` logic), so
//! a config.yaml written for LiteLLM reaches the same servers with the same keys.
//!
//! A default credential goes only to the provider's own hosts: an entry that points
//! `api_base` elsewhere, and every self-hosted server (vLLM, Ollama, LM Studio, …), must name
//! its key (`api_key: os.environ/NAME`), or it sends none. (LiteLLM would also send, say,
//! `HOSTED_VLLM_API_KEY` to any `hosted_vllm/` server; Sluice sends a key only where it is named
//! or where its provider lives.)

use crate::config::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    /// The prefix, as in `model: groq/…`.
    pub name: &'static str,
    /// Wire format and authentication.
    pub provider: Provider,
    /// `api_base` when the entry gives none; `None`: the entry must give one.
    pub default_base: Option<&'static str>,
    /// Environment variable that overrides `default_base` (LiteLLM's `<PROVIDER>_API_BASE`).
    pub base_env: Option<&'static str>,
    /// Credential variables in LiteLLM's order of preference: the first one set is used.
    pub key_envs: &'static [&'static str],
    /// The hosts the default credential may go to; a name starting with `.` is a suffix.
    pub own_hosts: &'static [&'static str],
}

const fn spec(
    name: &'static str,
    provider: Provider,
    default_base: Option<&'static str>,
    base_env: Option<&'static str>,
    key_envs: &'static [&'static str],
    own_hosts: &'static [&'static str],
) -> ProviderSpec {
    ProviderSpec { name, provider, default_base, base_env, key_envs, own_hosts }
}

use Provider::{Anthropic, Azure, Bedrock, Gemini, Openai, VertexGemini};

/// Every supported prefix. OpenAI-compatible servers speak OpenAI's format with a Bearer token.
#[rustfmt::skip]
pub const PROVIDERS: &[ProviderSpec] = &[
    spec("openai", Openai, Some("https://api.openai.com/v1"), Some("OPENAI_API_BASE"), &["OPENAI_API_KEY"], &["api.openai.com"]),
    spec("text-completion-openai", Openai, Some("https://api.openai.com/v1"), Some("OPENAI_API_BASE"), &["OPENAI_API_KEY"], &["api.openai.com"]),
    spec("anthropic", Anthropic, Some("https://api.anthropic.com"), Some("ANTHROPIC_API_BASE"), &["ANTHROPIC_API_KEY"], &["api.anthropic.com"]),
    // Azure OpenAI: `api_base` is the resource's own URL; its key goes only to Azure's hosts.
    spec("azure", Azure, None, Some("AZURE_API_BASE"), &["AZURE_API_KEY", "AZURE_OPENAI_API_KEY"], &[".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"]),
    spec("gemini", Gemini, Some("https://generativelanguage.googleapis.com/v1beta"), Some("GEMINI_API_BASE"), &["GEMINI_API_KEY", "GOOGLE_API_KEY"], &["generativelanguage.googleapis.com"]),
    // Bedrock: `api_base` from the region (`aws_region_name`, AWS_REGION); no key: Envoy signs.
    spec("bedrock", Bedrock, None, Some("AWS_BEDROCK_RUNTIME_ENDPOINT"), &[], &[]),
    // Vertex AI: `api_base` from `vertex_location`; Gemini's format, or Anthropic's for Claude
    // (`VertexAnthropic`, chosen by the model's name); no key: an OAuth token the control
    // plane mints (`vertex_credentials`, else Google's application default credentials).
    spec("vertex_ai", VertexGemini, None, None, &[], &[]),
    spec("groq", Openai, Some("https://api.groq.com/openai/v1"), Some("GROQ_API_BASE"), &["GROQ_API_KEY"], &["api.groq.com"]),
    spec("mistral", Openai, Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_BASE"), &["MISTRAL_API_KEY"], &["api.mistral.ai"]),
    spec("codestral", Openai, Some("https://codestral.mistral.ai/v1"), Some("CODESTRAL_API_BASE"), &["CODESTRAL_API_KEY"], &["codestral.mistral.ai"]),
    spec("deepseek", Openai, Some("https://api.deepseek.com/beta"), Some("DEEPSEEK_API_BASE"), &["DEEPSEEK_API_KEY"], &["api.deepseek.com"]),
    spec("together_ai", Openai, Some("https://api.together.xyz/v1"), Some("TOGETHER_AI_API_BASE"), &["TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"], &["api.together.xyz"]),
    spec("fireworks_ai", Openai, Some("https://api.fireworks.ai/inference/v1"), Some("FIREWORKS_API_BASE"), &["FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"], &["api.fireworks.ai"]),
    spec("openrouter", Openai, Some("https://openrouter.ai/api/v1"), Some("OPENROUTER_API_BASE"), &["OPENROUTER_API_KEY", "OR_API_KEY"], &["openrouter.ai"]),
    spec("xai", Openai, Some("https://api.x.ai/v1"), Some("XAI_API_BASE"), &["XAI_API_KEY"], &["api.x.ai"]),
    spec("perplexity", Openai, Some("https://api.perplexity.ai"), Some("PERPLEXITY_API_BASE"), &["PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"], &["api.perplexity.ai"]),
    spec("cerebras", Openai, Some("https://api.cerebras.ai/v1"), Some("CEREBRAS_API_BASE"), &["CEREBRAS_API_KEY"], &["api.cerebras.ai"]),
    spec("sambanova", Openai, Some("https://api.sambanova.ai/v1"), Some("SAMBANOVA_API_BASE"), &["SAMBANOVA_API_KEY"], &["api.sambanova.ai"]),
    spec("nvidia_nim", Openai, Some("https://integrate.api.nvidia.com/v1"), Some("NVIDIA_NIM_API_BASE"), &["NVIDIA_NIM_API_KEY"], &["integrate.api.nvidia.com"]),
    spec("deepinfra", Openai, Some("https://api.deepinfra.com/v1/openai"), Some("DEEPINFRA_API_BASE"), &["DEEPINFRA_API_KEY"], &["api.deepinfra.com"]),
    // Self-hosted servers: `api_base` required (or its variable), a key only when named.
    spec("hosted_vllm", Openai, None, Some("HOSTED_VLLM_API_BASE"), &[], &[]),
    spec("lm_studio", Openai, None, Some("LM_STUDIO_API_BASE"), &[], &[]),
    spec("litellm_proxy", Openai, None, Some("LITELLM_PROXY_API_BASE"), &[], &[]),
    // Ollama through its OpenAI-compatible `/v1` API (LiteLLM calls its native `/api/chat`).
    spec("ollama", Openai, Some("http://localhost:11434/v1"), Some("OLLAMA_API_BASE"), &[], &[]),
    spec("ollama_chat", Openai, Some("http://localhost:11434/v1"), Some("OLLAMA_API_BASE"), &[], &[]),
    spec("custom_openai", Openai, None, None, &[], &[]),
    spec("openai_compatible", Openai, None, None, &[], &[]),
];

/// The spec of a prefix; a model with no prefix is OpenAI's, as in LiteLLM.
pub fn lookup(name: &str) -> Option<&'static ProviderSpec> {
    PROVIDERS.iter().find(|p| p.name == name)
}

impl ProviderSpec {
    /// Whether this provider's default credential may go to `host`.
    pub fn default_key_may_go_to(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.own_hosts.iter().any(|own| match own.strip_prefix('.') {
            Some(suffix) => host.ends_with(own) && host.len() > suffix.len() + 1,
            None => host == *own,
        })
    }
}

/// Every default credential variable: what a control plane may read without being told.
pub fn default_key_names() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().flat_map(|p| p.key_envs.iter().copied())
}

/// Azure OpenAI's `api-version` when neither the entry nor `AZURE_API_VERSION` gives one: the
/// newest generally available version.
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_defaults_parse() {
        for (i, p) in PROVIDERS.iter().enumerate() {
            assert!(PROVIDERS[..i].iter().all(|q| q.name != p.name), "{} twice", p.name);
            if let Some(base) = p.default_base {
                assert!(crate::litellm::parse_api_base(base).is_ok(), "{base}");
            }
        }
    }

    #[test]
    fn a_default_key_goes_only_to_its_own_hosts() {
        let azure = lookup("azure").map(|p| p.default_key_may_go_to("my-res.openai.azure.com"));
        assert_eq!(azure, Some(true));
        let azure = lookup("azure").map(|p| p.default_key_may_go_to("openai.azure.com.evil.example"));
        assert_eq!(azure, Some(false));
        // A suffix is not a host of its own.
        assert_eq!(lookup("azure").map(|p| p.default_key_may_go_to("openai.azure.com")), Some(false));
        assert_eq!(lookup("groq").map(|p| p.default_key_may_go_to("API.GROQ.COM.")), Some(true));
        assert_eq!(lookup("groq").map(|p| p.default_key_may_go_to("api.openai.com")), Some(false));
        assert_eq!(lookup("hosted_vllm").map(|p| p.default_key_may_go_to("10.0.0.5")), Some(false));
        assert_eq!(
            lookup("vertex_ai").map(|p| p.default_key_may_go_to("us-central1-aiplatform.googleapis.com")),
            Some(false)
        );
    }
}
