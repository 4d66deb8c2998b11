//! What the mock served: a counter tests compare spend records against, and the last requests
//! (with the credential headers received, so tests can prove the client's key never arrived).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::providers::Reply;
use crate::request::{Received, Target};

const KEEP: usize = 1000;

#[derive(Debug, Clone, Serialize)]
struct Seen {
    path: String,
    /// The raw query string (e.g. Azure's `api-version=…`), None when the URL had none.
    query: Option<String>,
    model: Option<String>,
    stream: bool,
    include_usage: bool,
    authorization: Option<String>,
    x_api_key: Option<String>,
    api_key: Option<String>,
    /// Gemini's key header.
    x_goog_api_key: Option<String>,
    /// SigV4's headers (Bedrock): the signing time, the session token, the payload hash.
    x_amz_date: Option<String>,
    x_amz_security_token: Option<String>,
    x_amz_content_sha256: Option<String>,
    anthropic_version: Option<String>,
    accept_encoding: Option<String>,
    /// The content-length header as sent, to check it against the body that arrived.
    content_length: Option<String>,
    status: u16,
    body_bytes: usize,
    /// The request body as JSON, kept on Gemini, Vertex AI and Bedrock paths (null elsewhere, or
    /// when not JSON) so a test can check what a translation sent (systemInstruction, toolConfig…).
    body_json: Option<serde_json::Value>,
    /// Envoy's own `x-envoy-*` request headers that arrived (names), to prove the router kept
    /// its retry and timeout headers to itself.
    envoy_headers: Vec<String>,
    /// Envoy's `x-request-id`: a request's attempts share it.
    request_id: Option<String>,
    /// The client's address, if Envoy forwarded it (it must not: the provider has no need of it).
    x_forwarded_for: Option<String>,
}

#[derive(Default)]
pub struct Stats {
    served: AtomicU64,
    /// Access tokens Google's token endpoints issued (the gateway's token fetches, not served requests).
    google_tokens_issued: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_path: HashMap<String, u64>,
    requests: VecDeque<Seen>,
}

#[derive(serde::Deserialize, Default)]
struct Peek {
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<PeekOptions>,
}

#[derive(serde::Deserialize, Default)]
struct PeekOptions {
    include_usage: Option<bool>,
}

impl Stats {
    /// Records a request and the status it got. On a path that names its model (`target`), the
    /// model and streaming are the path's and the body is kept; elsewhere they are the body's.
    pub fn record(&self, received: &Received, reply: &Reply, target: Option<&Target>) {
        let (model, stream, include_usage, body_json) = match target {
            Some(target) => (target.model().map(str::to_owned), target.stream(), false, received.json()),
            None => {
                let peek: Peek = serde_json::from_slice(&received.body).unwrap_or_default();
                let include_usage = peek.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
                (peek.model, peek.stream.unwrap_or(false), include_usage, None)
            }
        };
        let header = |name: &str| received.header(name).map(str::to_owned);
        self.push(Seen {
            path: received.path.clone(),
            query: received.query.clone(),
            model,
            stream,
            include_usage,
            authorization: header("authorization"),
            x_api_key: header("x-api-key"),
            api_key: header("api-key"),
            x_goog_api_key: header("x-goog-api-key"),
            x_amz_date: header("x-amz-date"),
            x_amz_security_token: header("x-amz-security-token"),
            x_amz_content_sha256: header("x-amz-content-sha256"),
            anthropic_version: header("anthropic-version"),
            accept_encoding: header("accept-encoding"),
            content_length: header("content-length"),
            status: reply.status(),
            body_bytes: received.body.len(),
            body_json,
            envoy_headers: received.headers.keys().filter(|k| k.starts_with("x-envoy-")).cloned().collect(),
            request_id: header("x-request-id"),
            x_forwarded_for: header("x-forwarded-for"),
        });
    }

    fn push(&self, seen: Seen) {
        // A started 2xx response is a billed upstream call, even if it is cut later.
        if (200..300).contains(&seen.status) {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut inner) = self.inner.lock() {
            *inner.by_path.entry(seen.path.clone()).or_default() += 1;
            if inner.requests.len() == KEEP {
                inner.requests.pop_front();
            }
            inner.requests.push_back(seen);
        }
    }

    /// Counts an access token issued.
    pub fn google_token_issued(&self) {
        self.google_tokens_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Vec<u8> {
        let served = self.served.load(Ordering::Relaxed);
        let google_tokens_issued = self.google_tokens_issued.load(Ordering::Relaxed);
        let Ok(inner) = self.inner.lock() else {
            return b"{}".to_vec();
        };
        serde_json::to_vec(&serde_json::json!({
            "served": served,
            "google_tokens_issued": google_tokens_issued,
            "by_path": inner.by_path,
            "requests": inner.requests,
        }))
        .unwrap_or_default()
    }

    /// Forgets what was served and the tokens counted (the tokens themselves stay good).
    pub fn reset(&self) {
        self.served.store(0, Ordering::Relaxed);
        self.google_tokens_issued.store(0, Ordering::Relaxed);
        if let Ok(mut inner) = self.inner.lock() {
            inner.by_path.clear();
            inner.requests.clear();
        }
    }
}
