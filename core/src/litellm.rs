//! LiteLLM's config.yaml shape → [`crate::config::GatewayConfig`]. (Being written.)
