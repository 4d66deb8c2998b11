//! Microsoft Entra ID's token endpoint for Azure OpenAI, as `https://login.microsoftonline.com`
//! serves it: `POST /{tenant}/oauth2/v2.0/token`, the client-credentials grant with the
//! client's id and secret in the form (`client_secret_post`) or in basic auth, for a `.default`
//! scope. Tokens come from the same store as Google's; with `--azure-ad-client-id`, Azure
//! OpenAI paths take `Authorization: Bearer <token>` in place of `api-key`.

use hyper::StatusCode;
use serde_json::json;

use crate::google_auth::{Tokens, form};
use crate::{Config, Received, Reply};

/// Whether `path` is a tenant's token endpoint; its tenant.
pub fn tenant_of(path: &str) -> Option<&str> {
    let tenant = path.strip_prefix('/')?.strip_suffix("/oauth2/v2.0/token")?;
    (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
}

/// Entra ID's error body (`AADSTS…` codes in its words).
fn refused(status: StatusCode, error: &str, description: &str) -> Reply {
    Reply::json(status, &json!({"error": error, "error_description": description}))
}

/// A token for the configured client, or Entra ID's error.
pub fn token(received: &Received, config: &Config, tokens: &Tokens) -> Reply {
    let Some((client_id, secret)) = &config.azure_ad_client else {
        return refused(StatusCode::BAD_REQUEST, "invalid_request", "AADSTS900023: no application is registered here");
    };
    let form = form(&received.body);
    let field = |name: &str| form.get(name).map_or("", String::as_str);
    if field("grant_type") != "client_credentials" {
        return refused(StatusCode::BAD_REQUEST, "unsupported_grant_type", "AADSTS70003: unsupported grant type");
    }
    // client_secret_basic: `Authorization: Basic base64(id:secret)` (URL-encoded parts).
    let basic = received
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let (id, given) = match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((id, s)) => (id.to_owned(), s.to_owned()),
        None => (field("client_id").to_owned(), field("client_secret").to_owned()),
    };
    if id != *client_id {
        return refused(StatusCode::BAD_REQUEST, "unauthorized_client", "AADSTS700016: application not found");
    }
    if given != *secret {
        return refused(StatusCode::UNAUTHORIZED, "invalid_client", "AADSTS7000215: Invalid client secret provided.");
    }
    if !field("scope").ends_with("/.default") {
        return refused(StatusCode::BAD_REQUEST, "invalid_scope", "AADSTS1002012: the scope must end in /.default");
    }
    Reply::ok(&tokens.issue(3600))
}
