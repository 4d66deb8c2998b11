//! Claude on Google Cloud's Vertex AI: Anthropic's Messages API with two differences in the
//! body (the rest — the answer, the stream, the errors — is Anthropic's own). The model is
//! named by the path (`…/publishers/anthropic/models/{model}:rawPredict`), so the body must
//! not carry one, and the API version goes in the body as `anthropic_version` instead of
//! Anthropic's `anthropic-version` header.

use serde_json::{Map, Value};

use super::ConversionError;

/// The only version Vertex's Claude models take.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// An Anthropic Messages body made Vertex's: without `model`, with `anthropic_version` (a
/// client's own value kept: a newer one Vertex adds is the client's to ask for).
pub fn anthropic_request(body: &[u8]) -> Result<Vec<u8>, ConversionError> {
    let mut object: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ConversionError::InvalidRequest { detail: format!("the body is not a JSON object: {e}") })?;
    object.remove("model");
    object.entry("anthropic_version").or_insert_with(|| Value::from(ANTHROPIC_VERSION));
    serde_json::to_vec(&object).map_err(|e| ConversionError::InvalidRequest { detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &[u8]) -> Value {
        serde_json::from_slice(&anthropic_request(body).unwrap()).unwrap()
    }

    #[test]
    fn the_model_leaves_the_body_and_the_version_joins_it() {
        let out = parsed(br#"{"model":"claude-3-5-sonnet@20240620","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"stream":true}"#);
        assert_eq!(out.get("model"), None);
        assert_eq!(out["anthropic_version"], "vertex-2023-10-16");
        // Everything else as the client sent it.
        assert_eq!(out["max_tokens"], 5);
        assert_eq!(out["stream"], true);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn a_clients_own_version_is_kept() {
        let out = parsed(br#"{"anthropic_version":"vertex-2099-01-01","messages":[]}"#);
        assert_eq!(out["anthropic_version"], "vertex-2099-01-01");
    }

    #[test]
    fn what_is_not_an_object_is_the_clients_error() {
        for body in [&b"[]"[..], b"not json", b"\"s\""] {
            assert!(matches!(anthropic_request(body), Err(ConversionError::InvalidRequest { .. })), "{body:?}");
        }
    }
}
