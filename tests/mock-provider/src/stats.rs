//! What the mock served: a counter tests compare spend records against, and the last requests
//! (with the credential headers received, so tests can prove the client's key never arrived).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::bedrock;
use crate::gemini::Target;
use crate::providers::Reply;

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
    /// The request body as JSON, kept on Gemini and Bedrock paths (null elsewhere, or when not
    /// JSON) so a test can check what a translation sent (systemInstruction, toolConfig…).
    body_json: Option<serde_json::Value>,
}

#[derive(Default)]
pub struct Stats {
    served: AtomicU64,
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

impl Seen {
    /// What every request records; the body-derived fields are the caller's.
    fn new(path: &str, query: Option<&str>, headers: &HashMap<String, String>, body: &[u8], reply: &Reply) -> Self {
        Self {
            path: path.to_owned(),
            query: query.map(str::to_owned),
            model: None,
            stream: false,
            include_usage: false,
            authorization: headers.get("authorization").cloned(),
            x_api_key: headers.get("x-api-key").cloned(),
            api_key: headers.get("api-key").cloned(),
            x_goog_api_key: headers.get("x-goog-api-key").cloned(),
            x_amz_date: headers.get("x-amz-date").cloned(),
            x_amz_security_token: headers.get("x-amz-security-token").cloned(),
            x_amz_content_sha256: headers.get("x-amz-content-sha256").cloned(),
            anthropic_version: headers.get("anthropic-version").cloned(),
            accept_encoding: headers.get("accept-encoding").cloned(),
            content_length: headers.get("content-length").cloned(),
            status: reply.status(),
            body_bytes: body.len(),
            body_json: None,
        }
    }
}

impl Stats {
    pub fn record(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HashMap<String, String>,
        body: &[u8],
        reply: &Reply,
    ) {
        let peek: Peek = serde_json::from_slice(body).unwrap_or_default();
        let mut seen = Seen::new(path, query, headers, body, reply);
        seen.model = peek.model;
        seen.stream = peek.stream.unwrap_or(false);
        seen.include_usage = peek.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        self.push(seen);
    }

    /// A request on a Gemini path: the model and streaming are the path's; the body is kept.
    pub fn record_gemini(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HashMap<String, String>,
        body: &[u8],
        reply: &Reply,
        target: &Target,
    ) {
        let mut seen = Seen::new(path, query, headers, body, reply);
        seen.model = target.model().map(str::to_owned);
        seen.stream = target.stream();
        seen.body_json = serde_json::from_slice(body).ok();
        self.push(seen);
    }

    /// A request on a Bedrock path: the (decoded) model and streaming are the path's; the body is kept.
    pub fn record_bedrock(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HashMap<String, String>,
        body: &[u8],
        reply: &Reply,
        target: &bedrock::Target,
    ) {
        let mut seen = Seen::new(path, query, headers, body, reply);
        seen.model = target.model().map(str::to_owned);
        seen.stream = target.stream();
        seen.body_json = serde_json::from_slice(body).ok();
        self.push(seen);
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

    pub fn to_json(&self) -> Vec<u8> {
        let served = self.served.load(Ordering::Relaxed);
        let Ok(inner) = self.inner.lock() else {
            return b"{}".to_vec();
        };
        serde_json::to_vec(
            &serde_json::json!({ "served": served, "by_path": inner.by_path, "requests": inner.requests }),
        )
        .unwrap_or_default()
    }

    pub fn reset(&self) {
        self.served.store(0, Ordering::Relaxed);
        if let Ok(mut inner) = self.inner.lock() {
            inner.by_path.clear();
            inner.requests.clear();
        }
    }
}
