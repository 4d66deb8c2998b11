//! LiteLLM's `GET /health`: every deployment asked the smallest question its mode takes, and
//! the answers reported in LiteLLM's shape (`healthy_endpoints`, `unhealthy_endpoints`, their
//! counts). Pure: the filter sends the probes and hands the answers here.
//!
//! What a report shows of a deployment is what LiteLLM shows an admin (model, provider,
//! `api_base`, mode, id) and never a credential: a provider's error message is cut to its
//! first sentence-sized part with anything shaped like a key removed, since some providers
//! quote part of a rejected key back.

use serde_json::{Value, json};

use crate::config::{Deployment, ModelMode, Provider};
use crate::endpoint::Endpoint;

/// What a probe asks: LiteLLM's one-token question for a chat model, and the smallest input
/// of the other modes (a Responses call must allow at least 16 output tokens).
pub fn probe_request(mode: Option<ModelMode>, model: &str) -> (Endpoint, Vec<u8>) {
    let (endpoint, body) = match mode {
        None | Some(ModelMode::Chat) => (
            Endpoint::ChatCompletions,
            json!({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}),
        ),
        Some(ModelMode::Completion) => {
            (Endpoint::Completions, json!({"model": model, "prompt": "ping", "max_tokens": 1}))
        }
        Some(ModelMode::Embedding) => (Endpoint::Embeddings, json!({"model": model, "input": ["ping"]})),
        Some(ModelMode::Responses) => {
            (Endpoint::Responses, json!({"model": model, "input": "ping", "max_output_tokens": 16}))
        }
    };
    (endpoint, body.to_string().into_bytes())
}

/// A probe's answer: its status (None when none came: refused connection, reset, timeout)
/// and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    Unhealthy(String),
}

/// The longest error text a report carries per deployment.
const MAX_ERROR_CHARS: usize = 200;

impl Outcome {
    pub fn of(status: Option<u16>, body: &[u8]) -> Outcome {
        match status {
            Some(200..=299) => Outcome::Healthy,
            None => Outcome::Unhealthy("no answer: the connection failed, was reset or timed out".into()),
            Some(status) => Outcome::Unhealthy(match provider_message(body) {
                Some(message) => format!("HTTP {status}: {message}"),
                None => format!("HTTP {status}"),
            }),
        }
    }
}

/// The provider's error message (OpenAI's, Anthropic's and Google's `error.message`, or a
/// bare `message`), shortened and with key-like words removed.
fn provider_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .or_else(|| value.get("error").filter(|e| e.is_string()))?
        .as_str()?;
    let mut out = String::new();
    for word in message.split_whitespace() {
        let shown = if looks_like_a_secret(word) { "[redacted]" } else { word };
        if out.chars().count() + shown.chars().count() + 1 > MAX_ERROR_CHARS {
            out.push_str(" …");
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(shown);
    }
    (!out.is_empty()).then_some(out)
}

/// A word a provider may have quoted from a credential: a known key prefix, a masked key
/// (`sk-abc***xyz`), or a long unbroken run of letters and digits.
fn looks_like_a_secret(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    const PREFIXES: [&str; 5] = ["sk-", "sk_", "AIza", "key-", "Bearer"];
    PREFIXES.iter().any(|p| word.starts_with(p))
        || word.contains('*')
        || (word.len() >= 24 && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Openai => "openai",
        Provider::Anthropic => "anthropic",
        Provider::Azure => "azure",
        Provider::Gemini => "gemini",
        Provider::Bedrock => "bedrock",
        Provider::VertexGemini | Provider::VertexAnthropic => "vertex_ai",
    }
}

fn mode_name(mode: Option<ModelMode>) -> &'static str {
    match mode {
        None | Some(ModelMode::Chat) => "chat",
        Some(ModelMode::Completion) => "completion",
        Some(ModelMode::Embedding) => "embedding",
        Some(ModelMode::Responses) => "responses",
    }
}

/// One deployment's entry, as LiteLLM lists it.
fn entry(deployment: &Deployment, outcome: &Outcome) -> Value {
    let provider = provider_name(deployment.provider);
    let mut entry = json!({
        "model": format!("{provider}/{}", deployment.upstream_model),
        "model_name": deployment.model_name,
        "model_id": deployment.id,
        "api_base": deployment.origin,
        "custom_llm_provider": provider,
        "mode": mode_name(deployment.mode),
    });
    if let (Outcome::Unhealthy(error), Some(fields)) = (outcome, entry.as_object_mut()) {
        fields.insert("error".into(), Value::String(error.clone()));
    }
    entry
}

/// The report `/health` answers with, deployments in config order.
pub fn report<'a>(checked: impl IntoIterator<Item = (&'a Deployment, &'a Outcome)>) -> Vec<u8> {
    let (mut healthy, mut unhealthy) = (Vec::new(), Vec::new());
    for (deployment, outcome) in checked {
        match outcome {
            Outcome::Healthy => healthy.push(entry(deployment, outcome)),
            Outcome::Unhealthy(_) => unhealthy.push(entry(deployment, outcome)),
        }
    }
    json!({
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
    })
    .to_string()
    .into_bytes()
}

/// Which deployments a `/health` query asks about: `model_id=` one deployment (an id that
/// matches none: all, as LiteLLM does), `model=` a group or a provider model
/// (`openai/gpt-4o`), else all. Wildcard deployments name no model to ask and are left out.
pub fn selected(deployments: &[Deployment], query: &str) -> Vec<usize> {
    let param = |name: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    };
    let probeable = |d: &&Deployment| !d.upstream_model.contains('*');
    let all = || deployments.iter().enumerate().filter(|(_, d)| probeable(d)).map(|(i, _)| i).collect();
    if let Some(id) = param("model_id") {
        let by_id: Vec<usize> =
            deployments.iter().enumerate().filter(|(_, d)| probeable(d) && d.id == id).map(|(i, _)| i).collect();
        return if by_id.is_empty() { all() } else { by_id };
    }
    match param("model") {
        Some(model) => deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                probeable(d)
                    && (d.model_name == model || format!("{}/{}", provider_name(d.provider), d.upstream_model) == model)
            })
            .map(|(i, _)| i)
            .collect(),
        None => all(),
    }
}

/// `%XX` and `+` decoded (a query's value); invalid escapes are kept as written.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::deployment;

    #[test]
    fn each_mode_gets_the_smallest_request_of_its_route() {
        let (endpoint, body) = probe_request(None, "gpt-4o");
        assert_eq!(endpoint, Endpoint::ChatCompletions);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((body["model"].as_str(), body["max_tokens"].as_u64()), (Some("gpt-4o"), Some(1)));
        assert_eq!(probe_request(Some(ModelMode::Embedding), "e").0, Endpoint::Embeddings);
        assert_eq!(probe_request(Some(ModelMode::Completion), "c").0, Endpoint::Completions);
        let (endpoint, body) = probe_request(Some(ModelMode::Responses), "r");
        assert_eq!(endpoint, Endpoint::Responses);
        assert!(String::from_utf8(body).unwrap().contains("\"max_output_tokens\":16"));
    }

    #[test]
    fn outcomes_say_why_without_quoting_a_key() {
        assert_eq!(Outcome::of(Some(200), b"{}"), Outcome::Healthy);
        assert!(matches!(Outcome::of(None, b""), Outcome::Unhealthy(e) if e.starts_with("no answer")));
        let openai = br#"{"error": {"message": "Incorrect API key provided: sk-proj-abc***wxyz. You can find your API key at https://platform.openai.com.", "type": "invalid_request_error"}}"#;
        let Outcome::Unhealthy(error) = Outcome::of(Some(401), openai) else { panic!() };
        assert!(error.starts_with("HTTP 401: Incorrect API key provided: [redacted]"), "{error}");
        assert!(!error.contains("wxyz") && !error.contains("sk-proj"), "{error}");
        let long = format!(r#"{{"message": "{}"}}"#, "overloaded ".repeat(40));
        let Outcome::Unhealthy(error) = Outcome::of(Some(529), long.as_bytes()) else { panic!() };
        assert!(error.chars().count() <= MAX_ERROR_CHARS + 12 && error.ends_with('…'), "{error}");
        assert_eq!(Outcome::of(Some(503), b"upstream connect error"), Outcome::Unhealthy("HTTP 503".into()));
        let opaque = br#"{"error": {"message": "token 0123456789abcdefABCDEF0123 rejected"}}"#;
        let Outcome::Unhealthy(error) = Outcome::of(Some(403), opaque) else { panic!() };
        assert_eq!(error, "HTTP 403: token [redacted] rejected");
    }

    #[test]
    fn the_report_is_litellms_shape() {
        let mut a = deployment("a", "gpt-4o");
        a.origin = "https://api.openai.com".into();
        let b = Deployment { provider: Provider::Anthropic, upstream_model: "claude".into(), ..deployment("b", "c") };
        let (ok, down) = (Outcome::Healthy, Outcome::Unhealthy("HTTP 500".into()));
        let report: Value = serde_json::from_slice(&report([(&a, &ok), (&b, &down)])).unwrap();
        assert_eq!((report["healthy_count"].as_u64(), report["unhealthy_count"].as_u64()), (Some(1), Some(1)));
        let healthy = &report["healthy_endpoints"][0];
        assert_eq!(healthy["model"], "openai/gpt-4o");
        assert_eq!(healthy["api_base"], "https://api.openai.com");
        assert_eq!(healthy["model_id"], "a");
        assert!(healthy.get("error").is_none());
        let unhealthy = &report["unhealthy_endpoints"][0];
        assert_eq!(
            (unhealthy["model"].as_str(), unhealthy["error"].as_str()),
            (Some("anthropic/claude"), Some("HTTP 500"))
        );
    }

    #[test]
    fn a_query_selects_by_id_group_or_provider_model() {
        let wildcard = Deployment { upstream_model: "*".into(), ..deployment("w", "openai/*") };
        let list = [deployment("a", "gpt-4o"), deployment("b", "gpt-4o"), deployment("c", "mini"), wildcard];
        assert_eq!(selected(&list, ""), [0, 1, 2]);
        assert_eq!(selected(&list, "model_id=b"), [1]);
        assert_eq!(selected(&list, "model_id=nope"), [0, 1, 2]);
        assert_eq!(selected(&list, "model=gpt-4o"), [0, 1]);
        assert_eq!(selected(&list, "model=openai%2Fmini"), [2]);
        assert!(selected(&list, "model=unknown").is_empty());
    }
}
