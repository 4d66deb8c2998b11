//! Google Vertex AI's model endpoints,
//! `POST /v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:{method}`
//! (also under `/v1beta1/`). Gemini (`publishers/google`): `:generateContent`,
//! `:streamGenerateContent` (SSE under `?alt=sse`) and `:countTokens`, answered as `gemini`
//! answers the same method. Claude (`publishers/anthropic`): `:rawPredict` and
//! `:streamRawPredict` take Anthropic's Messages body with `"anthropic_version":
//! "vertex-2023-10-16"` and no `model` (the path's), and are answered as `/v1/messages`
//! (streaming when the body says `"stream": true`); `count-tokens:rawPredict` takes a body that
//! names its model and is answered as `/v1/messages/count_tokens`. With `--google-auth` each
//! wants a bearer token `google_auth` issued and that has not expired (else Google's 401); a path
//! Vertex AI does not serve is Google's 404.

use hyper::StatusCode;
use serde_json::Value;

use crate::bedrock::percent_decode;
use crate::google_auth::Tokens;
use crate::providers::{self, Api, Dialect, Reply};
use crate::request::{Received, Target};
use crate::{Config, Knobs, gemini};

/// The `anthropic_version` Claude on Vertex AI wants in the body (instead of a header).
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Google's answer to a missing, unknown or expired token, as Vertex AI words it.
pub const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
                                   cookie or other valid authentication credential.";

/// What a Vertex AI path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A Gemini model's method (never `Target::NotFound`, which is `Route::NotFound`).
    Gemini(Target),
    /// Claude's `:rawPredict` or `:streamRawPredict` by the path's model.
    Claude { model: String },
    /// Claude's `count-tokens:rawPredict`.
    ClaudeCount,
    /// Another publisher or method, or a path without a project, location or model.
    NotFound,
}

/// Whether a path is Vertex AI's (everything under `/v1/projects/` and `/v1beta1/projects/`),
/// and what it asks. The project and location are single non-empty segments; the last segment
/// is percent-decoded (a client may encode the method's colon, or the `@` of Claude's version).
pub fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v1/projects/").or_else(|| path.strip_prefix("/v1beta1/projects/"))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let [project, "locations", location, "publishers", publisher, "models", last] = segments[..] else {
        return Some(Route::NotFound);
    };
    if project.is_empty() || location.is_empty() {
        return Some(Route::NotFound);
    }
    let Some(decoded) = percent_decode(last) else {
        return Some(Route::NotFound);
    };
    let Some((model, method)) = decoded.split_once(':').filter(|(model, _)| !model.is_empty()) else {
        return Some(Route::NotFound);
    };
    Some(match (publisher, model, method) {
        ("google", _, _) => match gemini::method_target(model, method, false) {
            Target::NotFound => Route::NotFound,
            target => Route::Gemini(target),
        },
        ("anthropic", "count-tokens", "rawPredict") => Route::ClaudeCount,
        ("anthropic", "count-tokens", _) => Route::NotFound,
        ("anthropic", _, "rawPredict" | "streamRawPredict") => Route::Claude { model: model.to_owned() },
        _ => Route::NotFound,
    })
}

/// The reply to one request on a Vertex AI path, and what it asked for as the stats record it
/// (Claude's model the path's and its streaming the body's; a count's model the body's).
pub fn reply(route: &Route, received: &Received, knobs: &Knobs, config: &Config, tokens: &Tokens) -> (Reply, Target) {
    // Claude's body is read here (its rules, its `stream`, a count's model); Gemini's by `gemini`.
    let body = matches!(route, Route::Claude { .. } | Route::ClaudeCount).then(|| received.json()).flatten();
    let field = |name: &str| body.as_ref().and_then(|b| b.get(name));
    let target = match route {
        Route::Gemini(target) => target.clone(),
        Route::Claude { model } => {
            Target::Model { model: model.clone(), stream: field("stream").and_then(Value::as_bool).unwrap_or(false) }
        }
        Route::ClaudeCount => match field("model").and_then(Value::as_str) {
            Some(model) => Target::Count { model: model.to_owned() },
            None => Target::NotFound,
        },
        Route::NotFound => Target::NotFound,
    };
    // Google authenticates before it looks the resource up.
    if config.google_auth && !tokens.authorised(received) {
        return (gemini::error(StatusCode::UNAUTHORIZED, UNAUTHENTICATED), target);
    }
    let reply = match route {
        Route::Gemini(target) => gemini::answer(target, received, knobs),
        Route::Claude { model } => match body.as_ref().map(claude_problem) {
            Some(Some(problem)) => Reply::Json {
                status: StatusCode::BAD_REQUEST,
                body: providers::anthropic_error(&problem, "invalid_request_error"),
            },
            // A body that is not JSON gets Anthropic's own answer to it from the shared reply.
            _ => {
                let dialect = Dialect::Vertex { model: Some(model.clone()) };
                providers::reply(Api::Messages, &dialect, received, knobs, config, false)
            }
        },
        Route::ClaudeCount => {
            providers::reply(Api::CountTokens, &Dialect::Vertex { model: None }, received, knobs, config, false)
        }
        Route::NotFound => gemini::answer(&Target::NotFound, received, knobs),
    };
    (reply, target)
}

/// What Vertex AI refuses in a Claude body: no `anthropic_version` or another than Vertex's,
/// and a `model` (the path names it).
fn claude_problem(request: &Value) -> Option<String> {
    match request.get("anthropic_version") {
        None => return Some("anthropic_version: Field required".to_owned()),
        Some(version) if version.as_str() != Some(ANTHROPIC_VERSION) => {
            return Some(format!("anthropic_version: Input should be '{ANTHROPIC_VERSION}', not {version}"));
        }
        Some(_) => {}
    }
    request
        .get("model")
        .map(|_| "model: Extra inputs are not permitted (on Vertex AI the path names the model)".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const BASE: &str = "/v1/projects/my-project/locations/us-east5/publishers";

    #[test]
    fn routes_gemini_methods() {
        let gemini = |target| Some(Route::Gemini(target));
        let model = |stream| Target::Model { model: "gemini-2.5-flash".to_owned(), stream };
        assert_eq!(route(&format!("{BASE}/google/models/gemini-2.5-flash:generateContent")), gemini(model(false)));
        assert_eq!(route(&format!("{BASE}/google/models/gemini-2.5-flash:streamGenerateContent")), gemini(model(true)));
        assert_eq!(
            route(&format!("{BASE}/google/models/gemini-2.5-flash:countTokens")),
            gemini(Target::Count { model: "gemini-2.5-flash".to_owned() })
        );
        assert_eq!(
            route("/v1beta1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash%3AgenerateContent"),
            gemini(model(false))
        );
    }

    #[test]
    fn routes_claude_methods() {
        let claude = Some(Route::Claude { model: "claude-sonnet-4@20250514".to_owned() });
        assert_eq!(route(&format!("{BASE}/anthropic/models/claude-sonnet-4@20250514:rawPredict")), claude);
        assert_eq!(route(&format!("{BASE}/anthropic/models/claude-sonnet-4@20250514:streamRawPredict")), claude);
        assert_eq!(route(&format!("{BASE}/anthropic/models/claude-sonnet-4%4020250514%3AstreamRawPredict")), claude);
        assert_eq!(route(&format!("{BASE}/anthropic/models/count-tokens:rawPredict")), Some(Route::ClaudeCount));
    }

    #[test]
    fn malformed_vertex_paths_are_not_found_and_others_not_vertex() {
        for path in [
            "/v1/projects//locations/us-east5/publishers/google/models/g:generateContent",
            "/v1/projects/p/locations//publishers/google/models/g:generateContent",
            "/v1/projects/p/x/locations/l/publishers/google/models/g:generateContent",
            "/v1/projects/p/locations/l/x/publishers/google/models/g:generateContent",
            "/v1/projects/p/locations/l/publishers/google/models/g",
            "/v1/projects/p/locations/l/publishers/google/models/:generateContent",
            "/v1/projects/p/locations/l/publishers/google/models/g:batchEmbedContents",
            "/v1/projects/p/locations/l/publishers/google/models/g:predict",
            "/v1/projects/p/locations/l/publishers/google/models/g:generateContent/more",
            "/v1/projects/p/locations/l/publishers/google/models/a/b:generateContent",
            "/v1/projects/p/locations/l/publishers/google/models/g%zz:generateContent",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:generateContent",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:predict",
            "/v1/projects/p/locations/l/publishers/anthropic/models/count-tokens:streamRawPredict",
            "/v1/projects/p/locations/l/publishers/meta/models/llama:rawPredict",
            "/v1/projects/p/locations/l/endpoints/openapi/chat/completions",
            "/v1/projects/p",
            "/v1/projects/",
        ] {
            assert_eq!(route(path), Some(Route::NotFound), "{path}");
        }
        for path in ["/v1/models/g:generateContent", "/v1/messages", "/v1beta/models/g:countTokens", "/projects/p"] {
            assert_eq!(route(path), None, "{path}");
        }
    }

    #[test]
    fn claude_bodies_want_vertexs_version_and_no_model() {
        let ok = json!({"anthropic_version": ANTHROPIC_VERSION, "messages": [], "max_tokens": 5});
        assert_eq!(claude_problem(&ok), None);
        let problem = |body: Value| claude_problem(&body).unwrap();
        assert!(problem(json!({"messages": []})).starts_with("anthropic_version: Field required"));
        assert!(
            problem(json!({"anthropic_version": "2023-06-01"})).contains("'vertex-2023-10-16', not \"2023-06-01\"")
        );
        assert!(
            problem(json!({"anthropic_version": ANTHROPIC_VERSION, "model": "m"})).starts_with("model: Extra inputs")
        );
        // The version is checked first.
        assert!(problem(json!({"model": "m"})).starts_with("anthropic_version"));
    }
}
