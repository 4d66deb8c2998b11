//! Every rejection the gateway makes, as one enum mapped to an HTTP status and an
//! OpenAI-style body `{"error":{"message","type","param","code"}}`.
//!
//! Codes follow LiteLLM where it defines one (budget exceeded is a 400 `budget_exceeded`),
//! OpenAI otherwise. Messages never contain a key, a hash or a provider credential.

use serde::Serialize;

/// Which counter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    Key,
    Team,
    KeyModel,
    /// The key's user (its budget counted by the control plane across the fleet; its RPM,
    /// TPM and parallel limits by each Envoy, like a team's).
    User,
    /// The key's organization (likewise).
    Organization,
    /// The key's user in the key's team (LiteLLM's team member budget; counted by the control
    /// plane).
    TeamMember,
    /// A deployment's own `rpm`/`tpm` (`usage-based-routing-v2`): the provider's limit, not
    /// the client's.
    Deployment,
    /// The request's end user (LiteLLM's customer, `crate::customers`).
    Customer,
    /// The whole gateway (LiteLLM's proxy budget, `litellm_settings.max_budget`).
    Proxy,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::KeyModel => "key_model",
            Self::User => "user",
            Self::Organization => "organization",
            Self::TeamMember => "team_member",
            Self::Deployment => "deployment",
            Self::Customer => "customer",
            Self::Proxy => "proxy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    MissingKey,
    MalformedKey,
    InvalidKey,
    KeyBlocked,
    KeyExpired,
    TeamBlocked,
    RouteNotAllowed {
        route: &'static str,
    },
    UnknownRoute,
    MethodNotAllowed {
        route: &'static str,
        allowed: &'static str,
    },
    ModelNotAllowed {
        model: String,
    },
    UnknownModel {
        model: String,
    },
    ModelNotOnRoute {
        model: String,
        route: &'static str,
    },
    MissingModel,
    InvalidJson {
        detail: String,
    },
    InvalidField {
        param: &'static str,
        detail: String,
    },
    BodyTooLarge {
        limit: u64,
    },
    /// The request cannot be put into the deployment's format (a malformed message, a part the
    /// provider has no counterpart for).
    Untranslatable {
        detail: String,
    },
    /// Parameters the deployment's provider cannot take (LiteLLM's UnsupportedParamsError).
    UnsupportedParams {
        provider: &'static str,
        params: Vec<String>,
    },
    RateLimited {
        scope: LimitScope,
        kind: LimitKind,
        limit: u64,
        retry_after_secs: u64,
    },
    /// The key's user or organization is blocked.
    OwnerBlocked {
        scope: LimitScope,
    },
    /// The request's end user (customer) is blocked: a 400, as LiteLLM answers it.
    CustomerBlocked {
        id: String,
    },
    /// The client's address is not in `general_settings.allowed_ips` or the key's
    /// `allowed_ips` (`unknown` when Envoy gave none).
    IpNotAllowed {
        ip: String,
    },
    /// LiteLLM's parallel request limiter: the scope has `limit` requests in flight already.
    ParallelLimitReached {
        scope: LimitScope,
        limit: u64,
    },
    BudgetExceeded {
        scope: LimitScope,
        spend_usd: f64,
        max_budget_usd: f64,
    },
    /// The budget of the key's user or organization, spent across the fleet (the control
    /// plane's count). Same status and code as [`Self::BudgetExceeded`]; the message names the
    /// owner, as LiteLLM's does.
    OwnerBudgetExceeded {
        scope: LimitScope,
        id: String,
        spend_usd: f64,
        max_budget_usd: f64,
    },
    /// Every deployment of the group that could serve the request is cooling down after
    /// failures (`cooldown.rs`).
    NoHealthyDeployment {
        group: String,
        retry_after_secs: u64,
    },
    /// Every deployment of the group that could serve the request is at its `rpm` or `tpm`
    /// (`usage-based-routing-v2`).
    GroupAtCapacity {
        group: String,
        retry_after_secs: u64,
    },
    /// The prompt does not fit any deployment of the group (`max_input_tokens`, checked before
    /// sending with `enable_pre_call_checks`), and no context-window fallback took it.
    ContextWindowExceeded {
        group: String,
        estimate: u64,
        max_input_tokens: u64,
    },
    /// A management API path (`/key/…`) on a standalone gateway: only `sluice serve` has one.
    ManagementUnavailable,
    /// The key is not cached and the control plane could not be asked (fail closed).
    KeyServiceUnavailable,
    /// The key is not cached and this worker may not ask the control plane about another key
    /// now (`key_lookup.rate`): a flood of made-up keys, or this client's share of lookups used.
    KeyLookupRateLimited {
        retry_after_secs: u64,
    },
    Internal {
        detail: &'static str,
    },
}

/// Longest client-supplied text echoed back in an error message.
const ECHO_LIMIT: usize = 128;

pub(crate) fn echo(s: &str) -> &str {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// Whose limit a scope is, as an error message names it.
fn whose(scope: LimitScope) -> &'static str {
    match scope {
        LimitScope::Key => "this API key",
        LimitScope::Team => "the team of this API key",
        LimitScope::KeyModel => "this API key and model",
        LimitScope::User => "the user of this API key",
        LimitScope::Organization => "the organization of this API key",
        LimitScope::TeamMember => "the user of this API key in its team",
        LimitScope::Deployment => "the model's deployment",
        LimitScope::Customer => "the end user of this request",
        LimitScope::Proxy => "this gateway",
    }
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingKey
            | Self::MalformedKey
            | Self::InvalidKey
            | Self::KeyBlocked
            | Self::KeyExpired
            | Self::TeamBlocked
            | Self::OwnerBlocked { .. } => 401,
            Self::RouteNotAllowed { .. } | Self::ModelNotAllowed { .. } | Self::IpNotAllowed { .. } => 403,
            Self::UnknownRoute | Self::ManagementUnavailable => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::BodyTooLarge { .. } => 413,
            Self::RateLimited { .. }
            | Self::ParallelLimitReached { .. }
            | Self::KeyLookupRateLimited { .. }
            | Self::GroupAtCapacity { .. } => 429,
            Self::Internal { .. } => 500,
            Self::KeyServiceUnavailable | Self::NoHealthyDeployment { .. } => 503,
            Self::UnknownModel { .. }
            | Self::ModelNotOnRoute { .. }
            | Self::MissingModel
            | Self::InvalidJson { .. }
            | Self::InvalidField { .. }
            | Self::Untranslatable { .. }
            | Self::UnsupportedParams { .. }
            | Self::BudgetExceeded { .. }
            | Self::OwnerBudgetExceeded { .. }
            | Self::CustomerBlocked { .. }
            | Self::ContextWindowExceeded { .. } => 400,
        }
    }

    /// Short machine-readable reason, also used as the `reason` of rejection metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingKey => "missing_api_key",
            Self::MalformedKey | Self::InvalidKey => "invalid_api_key",
            Self::KeyBlocked => "key_blocked",
            Self::KeyExpired => "key_expired",
            Self::TeamBlocked => "team_blocked",
            Self::OwnerBlocked { scope: LimitScope::Organization } => "organization_blocked",
            Self::OwnerBlocked { .. } => "user_blocked",
            Self::CustomerBlocked { .. } => "customer_blocked",
            Self::IpNotAllowed { .. } => "ip_not_allowed",
            Self::RouteNotAllowed { .. } => "route_not_allowed",
            Self::UnknownRoute => "unknown_url",
            Self::ManagementUnavailable => "management_api_unavailable",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::UnknownModel { .. } => "model_not_found",
            Self::ModelNotOnRoute { .. } => "model_not_supported_on_route",
            Self::MissingModel => "missing_model",
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidField { .. } | Self::Untranslatable { .. } => "invalid_value",
            Self::UnsupportedParams { .. } => "unsupported_params",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::RateLimited { kind: LimitKind::Requests, .. } => "rate_limit_exceeded",
            Self::RateLimited { kind: LimitKind::Tokens, .. } => "token_rate_limit_exceeded",
            Self::ParallelLimitReached { .. } => "parallel_request_limit_reached",
            Self::BudgetExceeded { .. } | Self::OwnerBudgetExceeded { .. } => "budget_exceeded",
            Self::KeyServiceUnavailable => "key_service_unavailable",
            Self::KeyLookupRateLimited { .. } => "key_lookup_rate_limited",
            Self::NoHealthyDeployment { .. } => "no_healthy_deployment",
            Self::GroupAtCapacity { .. } => "deployments_at_capacity",
            Self::ContextWindowExceeded { .. } => "context_length_exceeded",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// Every [`Self::code`]: the native build defines one counter per code when it loads its
    /// config (Envoy creates no stats after that).
    pub const CODES: &'static [&'static str] = &[
        "missing_api_key",
        "invalid_api_key",
        "key_blocked",
        "key_expired",
        "team_blocked",
        "user_blocked",
        "organization_blocked",
        "customer_blocked",
        "ip_not_allowed",
        "route_not_allowed",
        "unknown_url",
        "management_api_unavailable",
        "method_not_allowed",
        "model_not_allowed",
        "model_not_found",
        "model_not_supported_on_route",
        "missing_model",
        "invalid_json",
        "invalid_value",
        "unsupported_params",
        "request_too_large",
        "rate_limit_exceeded",
        "token_rate_limit_exceeded",
        "parallel_request_limit_reached",
        "budget_exceeded",
        "key_service_unavailable",
        "key_lookup_rate_limited",
        "no_healthy_deployment",
        "deployments_at_capacity",
        "context_length_exceeded",
        "internal_error",
    ];

    fn error_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 | 405 => "invalid_request_error",
            429 => "rate_limit_error",
            500 => "internal_error",
            503 => "service_unavailable",
            _ if matches!(self, Self::BudgetExceeded { .. } | Self::OwnerBudgetExceeded { .. }) => "budget_exceeded",
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::ModelNotAllowed { .. }
            | Self::UnknownModel { .. }
            | Self::ModelNotOnRoute { .. }
            | Self::MissingModel => Some("model"),
            Self::InvalidField { param, .. } => Some(param),
            Self::ContextWindowExceeded { .. } => Some("messages"),
            Self::CustomerBlocked { .. } => Some("user"),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::MissingKey => "No API key provided. Pass it as 'Authorization: Bearer <key>', 'x-api-key' or 'api-key'.".into(),
            Self::MalformedKey => "Invalid API key: not a well-formed Sluice key (wrong prefix, length or checksum).".into(),
            Self::InvalidKey => "Invalid API key: no such key.".into(),
            Self::KeyBlocked => "This API key is blocked.".into(),
            Self::KeyExpired => "This API key has expired.".into(),
            Self::TeamBlocked => "The team of this API key is blocked.".into(),
            Self::OwnerBlocked { scope: LimitScope::Organization } => "The organization of this API key is blocked.".into(),
            Self::OwnerBlocked { .. } => "The user of this API key is blocked.".into(),
            // LiteLLM's words.
            Self::CustomerBlocked { id } => format!("User blocked from making LLM API Calls. User={}", echo(id)),
            Self::IpNotAllowed { ip } => format!("Access forbidden: IP address {ip} not allowed."),
            Self::RouteNotAllowed { route } => format!("This API key is not allowed to call {route}."),
            Self::ManagementUnavailable => "LiteLLM's management API (/key/...) is served by the control plane (`sluice serve`), through its Envoys or on its admin port; this gateway runs standalone, with the keys of its config.yaml.".into(),
            Self::UnknownRoute => "Unknown URL. Sluice serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models and /v1/messages.".into(),
            Self::MethodNotAllowed { route, allowed } => format!("{route} only accepts {allowed}."),
            Self::ModelNotAllowed { model } => format!("This API key is not allowed to use model={}. Call /v1/models to see the models it may use.", echo(model)),
            Self::UnknownModel { model } => format!("Invalid model name passed in model={}. Call /v1/models to see the models available to this key.", echo(model)),
            Self::ModelNotOnRoute { model, route } => format!("model={} is not served on {route}.", echo(model)),
            Self::MissingModel => "Missing required parameter: 'model'.".into(),
            Self::InvalidJson { detail } => format!("The request body is not valid JSON: {}", echo(detail)),
            Self::InvalidField { param, detail } => format!("Invalid value for '{param}': {}", echo(detail)),
            Self::Untranslatable { detail } => format!("The request cannot be sent to this model's provider: {}", echo(detail)),
            Self::UnsupportedParams { provider, params } => format!(
                "{provider} does not support parameters: {}. To drop them, set `litellm_settings.drop_params: true` \
                 (or `drop_params: true` in the deployment's litellm_params).",
                echo(&params.join(", "))
            ),
            Self::BodyTooLarge { limit } => format!("Request body too large: the limit is {limit} bytes."),
            Self::RateLimited { scope, kind, limit, retry_after_secs } => {
                let what = match kind {
                    LimitKind::Requests => "requests per minute",
                    LimitKind::Tokens => "tokens per minute",
                };
                format!("Rate limit reached for {}: {limit} {what}. Retry after {retry_after_secs} s.", whose(*scope))
            }
            // LiteLLM's words first: its clients (and LiteLLM's own retry) look for them.
            Self::ParallelLimitReached { scope, limit } => format!(
                "Max parallel request limit reached. Hit limit for {}: {limit} requests in flight at once.",
                whose(*scope)
            ),
            Self::BudgetExceeded { scope, spend_usd, max_budget_usd } => {
                let whose = match scope {
                    LimitScope::Team => "Team budget",
                    LimitScope::Customer => "End user budget",
                    LimitScope::KeyModel => "This API key's budget for the model",
                    LimitScope::Proxy => "The gateway's budget (litellm_settings.max_budget)",
                    _ => "Budget",
                };
                format!("{whose} has been exceeded! Current cost: {spend_usd:.6}, Max budget: {max_budget_usd:.6}")
            }
            Self::OwnerBudgetExceeded { scope: LimitScope::TeamMember, id, spend_usd, max_budget_usd } => {
                let (team, user) = crate::config::member_scope_parts(id);
                format!(
                    "Budget has been exceeded! Team member={} in team={} Current cost: {spend_usd:.6}, Max budget: {max_budget_usd:.6}",
                    echo(user),
                    echo(team)
                )
            }
            // Spent across the fleet: the control plane said so, without the figure.
            Self::OwnerBudgetExceeded { scope: LimitScope::Proxy, max_budget_usd, .. } => format!(
                "The gateway's budget (litellm_settings.max_budget) has been exceeded! Max budget: {max_budget_usd:.6}"
            ),
            Self::OwnerBudgetExceeded { scope: LimitScope::Customer, id, max_budget_usd, .. } => format!(
                "Budget has been exceeded! End User={} has spent its budget. Max budget: {max_budget_usd:.6}",
                echo(id)
            ),
            Self::OwnerBudgetExceeded { scope, id, spend_usd, max_budget_usd } => {
                let whose = match scope {
                    LimitScope::Organization => "Organization",
                    LimitScope::Team => "Team",
                    _ => "User",
                };
                format!(
                    "Budget has been exceeded! {whose}={} Current cost: {spend_usd:.6}, Max budget: {max_budget_usd:.6}",
                    echo(id)
                )
            }
            Self::KeyServiceUnavailable => {
                "The gateway cannot check this API key right now (its control plane is unreachable). Retry shortly.".into()
            }
            Self::KeyLookupRateLimited { retry_after_secs } => format!(
                "Too many API keys this gateway has not seen recently are being checked; this one could not be checked now. Retry after {retry_after_secs} s."
            ),
            Self::NoHealthyDeployment { group, retry_after_secs } => format!(
                "No deployment of model group {} can take requests now: each failed recently and is cooling down. Retry after {retry_after_secs} s.",
                echo(group)
            ),
            Self::GroupAtCapacity { group, retry_after_secs } => format!(
                "No deployment of model group {} has capacity now: each is at its rpm or tpm limit. Retry after {retry_after_secs} s.",
                echo(group)
            ),
            // OpenAI's own words first: clients (LiteLLM's SDK among them) recognise them.
            Self::ContextWindowExceeded { group, estimate, max_input_tokens } => format!(
                "This model's maximum context length is {max_input_tokens} tokens. However, your messages resulted in \
                 about {estimate} tokens (the gateway's estimate), more than any deployment of model group {} takes. \
                 Set context_window_fallbacks to send such requests to a model with a larger context window.",
                echo(group)
            ),
            Self::Internal { detail } => format!("Internal gateway error: {detail}"),
        }
    }

    /// The OpenAI-style JSON error body.
    pub fn body(&self) -> Vec<u8> {
        error_body(&self.message(), self.error_type(), self.param(), self.code())
    }

    /// The body for a client of `format`: Anthropic's shape on `/v1/messages` (what its SDKs and
    /// Claude Code read), OpenAI's everywhere else.
    pub fn body_for(&self, format: ErrorFormat) -> Vec<u8> {
        match format {
            ErrorFormat::OpenAi => self.body(),
            ErrorFormat::Anthropic => anthropic_error_body(self.status(), &self.message()),
        }
    }
}

/// Which API's error shape a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    OpenAi,
    Anthropic,
}

/// Anthropic's error type for an HTTP status (its API reference, "Errors").
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_error_body(status: u16, message: &str) -> Vec<u8> {
    serde_json::json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
        .to_string()
        .into_bytes()
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

/// Serialises `{"error":{"message","type","param","code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: &str) -> Vec<u8> {
    let envelope = ErrorEnvelope { error: ErrorBody { message, kind, param, code } };
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"error":{"message":"internal error","type":"internal_error","param":null,"code":"internal_error"}}"#
            .to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On /v1/messages the gateway's own refusals read like Anthropic's: `type: error`, the
    /// error type Anthropic gives the status, the same message.
    #[test]
    fn anthropic_clients_get_anthropic_shaped_errors() {
        let shape = |e: &GatewayError| -> serde_json::Value {
            serde_json::from_slice(&e.body_for(ErrorFormat::Anthropic)).unwrap_or_default()
        };
        for (error, kind) in [
            (GatewayError::InvalidKey, "authentication_error"),
            (GatewayError::ModelNotAllowed { model: "m".into() }, "permission_error"),
            (GatewayError::UnknownRoute, "not_found_error"),
            (GatewayError::BodyTooLarge { limit: 1 }, "request_too_large"),
            (GatewayError::MissingModel, "invalid_request_error"),
            (GatewayError::KeyServiceUnavailable, "overloaded_error"),
            (GatewayError::Internal { detail: "x" }, "api_error"),
        ] {
            let body = shape(&error);
            assert_eq!(body["type"], "error", "{error:?}");
            assert_eq!(body["error"]["type"], kind, "{error:?}");
            assert_eq!(body["error"]["message"], error.message(), "{error:?}");
        }
        let openai: serde_json::Value =
            serde_json::from_slice(&GatewayError::InvalidKey.body_for(ErrorFormat::OpenAi)).unwrap_or_default();
        assert_eq!(openai["error"]["code"], "invalid_api_key");
    }

    fn parse(e: &GatewayError) -> serde_json::Value {
        serde_json::from_slice(&e.body()).unwrap()
    }

    #[test]
    fn every_code_is_listed() {
        let limited = |kind| GatewayError::RateLimited { scope: LimitScope::Key, kind, limit: 1, retry_after_secs: 1 };
        let every = [
            GatewayError::MissingKey,
            GatewayError::MalformedKey,
            GatewayError::InvalidKey,
            GatewayError::KeyBlocked,
            GatewayError::KeyExpired,
            GatewayError::TeamBlocked,
            GatewayError::RouteNotAllowed { route: "/" },
            GatewayError::UnknownRoute,
            GatewayError::MethodNotAllowed { route: "/", allowed: "POST" },
            GatewayError::ModelNotAllowed { model: "m".into() },
            GatewayError::UnknownModel { model: "m".into() },
            GatewayError::ModelNotOnRoute { model: "m".into(), route: "/" },
            GatewayError::MissingModel,
            GatewayError::InvalidJson { detail: "d".into() },
            GatewayError::InvalidField { param: "p", detail: "d".into() },
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::Untranslatable { detail: "d".into() },
            GatewayError::UnsupportedParams { provider: "anthropic", params: vec!["seed".into()] },
            limited(LimitKind::Requests),
            limited(LimitKind::Tokens),
            GatewayError::ParallelLimitReached { scope: LimitScope::Key, limit: 1 },
            GatewayError::OwnerBlocked { scope: LimitScope::User },
            GatewayError::OwnerBlocked { scope: LimitScope::Organization },
            GatewayError::CustomerBlocked { id: "ada".into() },
            GatewayError::IpNotAllowed { ip: "10.0.0.1".into() },
            GatewayError::BudgetExceeded { scope: LimitScope::Key, spend_usd: 1.0, max_budget_usd: 1.0 },
            GatewayError::OwnerBudgetExceeded {
                scope: LimitScope::User,
                id: "u".into(),
                spend_usd: 1.0,
                max_budget_usd: 1.0,
            },
            GatewayError::ManagementUnavailable,
            GatewayError::KeyServiceUnavailable,
            GatewayError::KeyLookupRateLimited { retry_after_secs: 1 },
            GatewayError::NoHealthyDeployment { group: "g".into(), retry_after_secs: 1 },
            GatewayError::GroupAtCapacity { group: "g".into(), retry_after_secs: 1 },
            GatewayError::ContextWindowExceeded { group: "g".into(), estimate: 9, max_input_tokens: 8 },
            GatewayError::Internal { detail: "d" },
        ];
        for e in &every {
            // A new variant must be added above (the match makes it a compile error to forget).
            match e {
                GatewayError::MissingKey
                | GatewayError::MalformedKey
                | GatewayError::InvalidKey
                | GatewayError::KeyBlocked
                | GatewayError::KeyExpired
                | GatewayError::TeamBlocked
                | GatewayError::RouteNotAllowed { .. }
                | GatewayError::UnknownRoute
                | GatewayError::MethodNotAllowed { .. }
                | GatewayError::ModelNotAllowed { .. }
                | GatewayError::UnknownModel { .. }
                | GatewayError::ModelNotOnRoute { .. }
                | GatewayError::MissingModel
                | GatewayError::InvalidJson { .. }
                | GatewayError::InvalidField { .. }
                | GatewayError::BodyTooLarge { .. }
                | GatewayError::Untranslatable { .. }
                | GatewayError::UnsupportedParams { .. }
                | GatewayError::RateLimited { .. }
                | GatewayError::ParallelLimitReached { .. }
                | GatewayError::OwnerBlocked { .. }
                | GatewayError::CustomerBlocked { .. }
                | GatewayError::IpNotAllowed { .. }
                | GatewayError::BudgetExceeded { .. }
                | GatewayError::OwnerBudgetExceeded { .. }
                | GatewayError::ManagementUnavailable
                | GatewayError::KeyServiceUnavailable
                | GatewayError::KeyLookupRateLimited { .. }
                | GatewayError::NoHealthyDeployment { .. }
                | GatewayError::GroupAtCapacity { .. }
                | GatewayError::ContextWindowExceeded { .. }
                | GatewayError::Internal { .. } => {}
            }
            assert!(GatewayError::CODES.contains(&e.code()), "{} is not in CODES", e.code());
        }
        let mut codes: Vec<&str> = every.iter().map(GatewayError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), GatewayError::CODES.len(), "CODES lists a code no error has");
    }

    #[test]
    fn bodies_are_openai_shaped() {
        let v = parse(&GatewayError::InvalidKey);
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["message"].as_str().unwrap().contains("Invalid API key"));
    }

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::MalformedKey.status(), 401);
        assert_eq!(GatewayError::ModelNotAllowed { model: "x".into() }.status(), 403);
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        let budget = GatewayError::BudgetExceeded { scope: LimitScope::Team, spend_usd: 1.5, max_budget_usd: 1.0 };
        assert_eq!(budget.status(), 400);
        assert_eq!(parse(&budget)["error"]["type"], "budget_exceeded");
        let rl = GatewayError::RateLimited {
            scope: LimitScope::Key,
            kind: LimitKind::Tokens,
            limit: 10,
            retry_after_secs: 3,
        };
        assert_eq!(rl.status(), 429);
        assert_eq!(parse(&rl)["error"]["code"], "token_rate_limit_exceeded");
        let lookups = GatewayError::KeyLookupRateLimited { retry_after_secs: 1 };
        assert_eq!((lookups.status(), lookups.code()), (429, "key_lookup_rate_limited"));
        assert_eq!(parse(&lookups)["error"]["type"], "rate_limit_error");
        assert!(lookups.message().ends_with("Retry after 1 s."));
    }

    #[test]
    fn a_user_or_organization_budget_names_its_owner_like_litellm() {
        let user = GatewayError::OwnerBudgetExceeded {
            scope: LimitScope::User,
            id: "alice".into(),
            spend_usd: 2.5,
            max_budget_usd: 2.0,
        };
        assert_eq!((user.status(), user.code()), (400, "budget_exceeded"));
        let v = parse(&user);
        assert_eq!(v["error"]["type"], "budget_exceeded");
        assert_eq!(
            v["error"]["message"],
            "Budget has been exceeded! User=alice Current cost: 2.500000, Max budget: 2.000000"
        );
        let org = GatewayError::OwnerBudgetExceeded {
            scope: LimitScope::Organization,
            id: "acme".into(),
            spend_usd: 1.0,
            max_budget_usd: 1.0,
        };
        assert!(org.message().starts_with("Budget has been exceeded! Organization=acme Current cost: 1.0"));
    }

    #[test]
    fn echoed_model_names_are_escaped_and_bounded() {
        let hostile = format!("\"}}\u{0}{}", "x".repeat(10_000));
        let v = parse(&GatewayError::UnknownModel { model: hostile });
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.len() < 400);
        assert!(msg.contains("\"}\u{0}"));
        assert_eq!(v["error"]["param"], "model");
    }
}
