//! The API routes Sluice serves, recognised from the request path.

use crate::usage::ApiFormat;

/// An LLM API route. LiteLLM accepts each with and without the `/v1` prefix; so does Sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// `GET /v1/models`: answered by the filter itself.
    Models,
    /// Anthropic `/v1/messages`: passed through to Anthropic deployments.
    Messages,
    /// OpenAI's Responses API (`/v1/responses`): passed through to OpenAI deployments.
    Responses,
    /// Anthropic's `/v1/messages/count_tokens` (Claude Code asks it): passed through to an
    /// Anthropic deployment of the group, else estimated by the filter. Never billed.
    CountTokens,
}

/// The paths of LiteLLM's management REST API that the control plane serves: an Envoy in xDS
/// mode routes them to it (the filter lets them pass), a standalone one has none to offer.
pub const MANAGEMENT_PREFIXES: [&str; 14] = [
    "/key/",
    "/team/",
    "/user/",
    "/organization/",
    "/customer/",
    "/end_user/",
    "/budget/",
    "/model/",
    "/v1/model/",
    "/model_group/",
    "/spend/",
    "/global/spend/",
    "/audit",
    // LiteLLM's paged lists (its client's `teams.list_v2`).
    "/v2/team/",
];

/// Whether `path` is one of the management API's.
pub fn is_management(path: &[u8]) -> bool {
    MANAGEMENT_PREFIXES.iter().any(|prefix| path.starts_with(prefix.as_bytes()))
}

impl Endpoint {
    /// The error shape this endpoint's clients read.
    pub fn error_format(self) -> crate::error::ErrorFormat {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => crate::error::ErrorFormat::Anthropic,
            _ => crate::error::ErrorFormat::OpenAi,
        }
    }

    pub const ALL: [Endpoint; 7] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Models,
        Endpoint::Messages,
        Endpoint::Responses,
        Endpoint::CountTokens,
    ];

    /// Recognises a request path (query string allowed), or None for a route Sluice doesn't serve.
    pub fn from_path(path: &[u8]) -> Option<Self> {
        let path = path.split(|b| *b == b'?').next().unwrap_or(path);
        let path = path.strip_suffix(b"/").unwrap_or(path);
        let path = path.strip_prefix(b"/v1").unwrap_or(path);
        match path {
            b"/chat/completions" => Some(Self::ChatCompletions),
            b"/completions" => Some(Self::Completions),
            b"/embeddings" => Some(Self::Embeddings),
            b"/models" => Some(Self::Models),
            b"/messages" => Some(Self::Messages),
            b"/responses" => Some(Self::Responses),
            b"/messages/count_tokens" => Some(Self::CountTokens),
            _ => None,
        }
    }

    /// Canonical route name, as written in `allowed_routes` and usage records.
    pub fn route(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Models => "/v1/models",
            Self::Messages => "/v1/messages",
            Self::Responses => "/v1/responses",
            Self::CountTokens => "/v1/messages/count_tokens",
        }
    }

    /// Path below the provider's base URL (`api_base` already ends in `/v1` for OpenAI).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Models => "/models",
            Self::Messages => "/v1/messages",
            Self::Responses => "/responses",
            Self::CountTokens => "/v1/messages/count_tokens",
        }
    }

    pub fn format(self) -> ApiFormat {
        match self {
            Self::Messages | Self::CountTokens => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Self::Models => "GET",
            _ => "POST",
        }
    }

    /// Whether responses on this route can stream (embeddings never do).
    pub fn can_stream(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions | Self::Messages | Self::Responses)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of endpoints, compiled from `allowed_routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSet(u8);

impl RouteSet {
    pub const ALL: RouteSet = RouteSet(0b111_1111);

    /// Compiles LiteLLM-style `allowed_routes`: route paths (with or without `/v1`) or the
    /// route groups `llm_api_routes`, `openai_routes`, `anthropic_routes`, `info_routes`.
    /// An empty list allows every route. Unknown names are returned as errors.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(Self::ALL);
        }
        let mut bits = 0u8;
        for name in names {
            let name = name.as_ref();
            bits |= match name {
                "llm_api_routes" => Self::ALL.0,
                "openai_routes" => {
                    Endpoint::ChatCompletions.bit()
                        | Endpoint::Completions.bit()
                        | Endpoint::Embeddings.bit()
                        | Endpoint::Models.bit()
                        | Endpoint::Responses.bit()
                }
                "anthropic_routes" => Endpoint::Messages.bit() | Endpoint::CountTokens.bit(),
                "info_routes" => Endpoint::Models.bit(),
                path => Endpoint::from_path(path.as_bytes())
                    .ok_or_else(|| format!("unknown route {path:?} in allowed_routes"))?
                    .bit(),
            };
        }
        Ok(Self(bits))
    }

    pub fn contains(self, endpoint: Endpoint) -> bool {
        self.0 & endpoint.bit() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_and_without_v1() {
        assert_eq!(Endpoint::from_path(b"/v1/chat/completions"), Some(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::from_path(b"/chat/completions"), Some(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::from_path(b"/v1/chat/completions?x=1"), Some(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::from_path(b"/v1/models/"), Some(Endpoint::Models));
        assert_eq!(Endpoint::from_path(b"/messages"), Some(Endpoint::Messages));
        assert_eq!(Endpoint::from_path(b"/v1/embeddings"), Some(Endpoint::Embeddings));
        assert_eq!(Endpoint::from_path(b"/v1/responses"), Some(Endpoint::Responses));
        assert_eq!(Endpoint::from_path(b"/v1/messages/count_tokens"), Some(Endpoint::CountTokens));
        assert_eq!(Endpoint::from_path(b"/messages/count_tokens?beta=true"), Some(Endpoint::CountTokens));
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.route().as_bytes()), Some(e));
            assert!(RouteSet::ALL.contains(e));
        }
        for other in
            [&b"/"[..], b"/v2/chat/completions", b"/v1/chat/completions/../x", b"/admin", b"", b"/v1/v1/models"]
        {
            assert_eq!(Endpoint::from_path(other), None);
        }
    }

    #[test]
    fn allowed_routes_compile() {
        let s = RouteSet::from_names(&["/v1/chat/completions", "info_routes"]).unwrap();
        assert!(s.contains(Endpoint::ChatCompletions));
        assert!(s.contains(Endpoint::Models));
        assert!(!s.contains(Endpoint::Embeddings));
        assert!(!s.contains(Endpoint::Messages));
        let empty: [&str; 0] = [];
        assert_eq!(RouteSet::from_names(&empty), Ok(RouteSet::ALL));
        assert!(RouteSet::from_names(&["/key/generate"]).is_err());
        let anthropic = RouteSet::from_names(&["anthropic_routes"]).unwrap();
        assert!(anthropic.contains(Endpoint::Messages) && !anthropic.contains(Endpoint::ChatCompletions));
        assert!(anthropic.contains(Endpoint::CountTokens));
    }
}
