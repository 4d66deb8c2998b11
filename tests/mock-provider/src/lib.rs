//! A mock LLM provider: OpenAI chat/completions/embeddings (also at Azure OpenAI's paths),
//! OpenAI responses, Anthropic messages, Google Gemini's generateContent and countTokens, Google
//! Vertex AI's Gemini and Claude (rawPredict) paths, and AWS Bedrock's Converse, streaming and
//! not, deterministic, with per-request knobs for latency, token counts, chunking, cuts, errors
//! and garbage. For Vertex AI it also plays Google's OAuth 2 token endpoint (`/token`) and the
//! GCE metadata server's token, whose tokens the Vertex AI paths then want (`--google-auth`). It
//! stands in for the paid upstream in tests, benchmarks and the quickstart, and counts what it
//! served so tests can check spend records against it.

mod azure_ad;
mod bedrock;
mod gemini;
mod google_auth;
mod knobs;
mod providers;
mod request;
mod stats;
mod vertex;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use knobs::Knobs;
use providers::{Api, Dialect, Reply};
use request::{Received, Target};
pub use stats::Stats;

/// The lifetime of the access tokens the Google token endpoints issue, unless set: Google's.
pub const DEFAULT_GOOGLE_TOKEN_TTL_SECS: u64 = 3599;

/// Server-wide settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub latency_ms: u64,
    /// Every answer this error status (`--status`), unless the request asks for another.
    pub status: Option<u16>,
    pub openai_key: Option<String>,
    pub anthropic_key: Option<String>,
    /// Required as `api-key` on Azure OpenAI paths when set.
    pub azure_key: Option<String>,
    /// Required as `x-goog-api-key` (or `?key=`) on Gemini paths when set.
    pub gemini_key: Option<String>,
    /// When set, Bedrock paths (`/model/…`) want a SigV4 `authorization` for this access key id
    /// and the `bedrock` service, and an `x-amz-date` (the signature itself is not verified).
    pub aws_access_key_id: Option<String>,
    /// A prompt longer than this many tokens (the mock's count: its bytes over four) is refused
    /// as too long, in the provider's own words (`--context-window`).
    pub context_window: Option<u64>,
    /// Vertex AI paths want `Authorization: Bearer <token>` with a token this mock's `/token` or
    /// metadata server issued and that has not expired (`--google-auth`); else anything goes.
    pub google_auth: bool,
    /// How long those tokens last, in seconds (`--google-token-ttl`; 0 issues expired ones).
    pub google_token_ttl_secs: u64,
    /// An Entra ID application (client id, secret) whose tokens Azure OpenAI paths take as
    /// `Authorization: Bearer` in place of `api-key` (`--azure-ad-client-id`, `-secret`).
    pub azure_ad_client: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            status: None,
            openai_key: None,
            anthropic_key: None,
            azure_key: None,
            gemini_key: None,
            aws_access_key_id: None,
            context_window: None,
            google_auth: false,
            google_token_ttl_secs: DEFAULT_GOOGLE_TOKEN_TTL_SECS,
            azure_ad_client: None,
        }
    }
}

/// A response body that is either complete or fed frame by frame from a channel; an `Err`
/// frame aborts the connection (a truncated stream, as a failing provider would cut it).
pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data))),
        }
    }
}

struct State {
    config: Arc<Config>,
    stats: Stats,
    /// Attempts seen per `x-request-id`, for `x-mock-fault-attempts`.
    attempts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The Google access tokens issued, for `--google-auth`.
    tokens: google_auth::Tokens,
}

/// Serves connections until `shutdown` resolves.
pub async fn serve<F>(listener: TcpListener, config: Arc<Config>, shutdown: F)
where
    F: std::future::Future,
{
    let state = Arc::new(State {
        config,
        stats: Stats::default(),
        attempts: Default::default(),
        tokens: google_auth::Tokens::default(),
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
                    let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

impl State {
    /// Records what a request got, waits out the latency knob, then answers.
    async fn answer(
        &self,
        received: &Received,
        reply: Reply,
        target: Option<&Target>,
        knobs: Knobs,
    ) -> Response<MockBody> {
        self.stats.record(received, &reply, target);
        if knobs.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
        }
        let retry_after = knobs.retry_after.filter(|_| knobs.status.is_some());
        let mut response = respond(reply, knobs);
        if let Some(seconds) = retry_after {
            response.headers_mut().insert("retry-after", hyper::header::HeaderValue::from(seconds));
        }
        response
    }

    /// The knobs for this attempt: past `x-mock-fault-attempts` of its request, no faults.
    fn knobs_for(&self, received: &Received) -> Knobs {
        let knobs = Knobs::from_headers(&received.headers, &self.config);
        let Some(faulty) = knobs.fault_attempts else { return knobs };
        let id = received.header("x-request-id").unwrap_or_default().to_owned();
        let attempt = match self.attempts.lock() {
            Ok(mut seen) => {
                let n = seen.entry(id).or_default();
                *n += 1;
                *n
            }
            Err(_) => 1,
        };
        if attempt > faulty { knobs.without_faults(&self.config) } else { knobs }
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let received = Received { path, query, headers, body };
    match received.path.as_str() {
        "/mock/stats" => return Ok(json_response(StatusCode::OK, state.stats.to_json())),
        "/mock/reset" => {
            state.stats.reset();
            return Ok(json_response(StatusCode::OK, b"{}".to_vec()));
        }
        // Google's credentials: no knobs (they are the gateway's own calls, not a client's), and
        // counted apart from the served requests (no spend record follows a token).
        google_auth::TOKEN_PATH => {
            let reply = google_auth::token(&received, &state.config, &state.tokens);
            if reply.status() == 200 {
                state.stats.google_token_issued();
            }
            return Ok(respond(reply, Knobs::default()));
        }
        path if azure_ad::tenant_of(path).is_some() => {
            let reply = azure_ad::token(&received, &state.config, &state.tokens);
            if reply.status() == 200 {
                state.stats.google_token_issued();
            }
            return Ok(respond(reply, Knobs::default()));
        }
        google_auth::METADATA_TOKEN_PATH => {
            let response = google_auth::metadata(&received, &state.config, &state.tokens);
            if response.status() == StatusCode::OK {
                state.stats.google_token_issued();
            }
            return Ok(response);
        }
        _ => {}
    }
    let knobs = state.knobs_for(&received);
    // Before Gemini's and OpenAI's: Vertex AI's paths are under `/v1/` too.
    if let Some(route) = vertex::route(&received.path) {
        let (reply, target) = vertex::reply(&route, &received, &knobs, &state.config, &state.tokens);
        return Ok(state.answer(&received, reply, Some(&target), knobs).await);
    }
    if let Some(target) = gemini::route(&received.path) {
        let reply = gemini::reply(&target, &received, &knobs, &state.config);
        return Ok(state.answer(&received, reply, Some(&target), knobs).await);
    }
    if let Some(target) = bedrock::route(&received.path) {
        let answer = bedrock::reply(&target, &received, &knobs, &state.config);
        let mut response = state.answer(&received, answer.reply, Some(&target), knobs).await;
        bedrock::add_headers(answer.error_type, response.headers_mut());
        return Ok(response);
    }
    let Some((api, dialect)) = route(&received.path) else {
        if received.path.starts_with("/openai/") {
            return Ok(respond(providers::azure_error(StatusCode::NOT_FOUND, AZURE_NOT_FOUND), Knobs::default()));
        }
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            providers::openai_error("Unknown URL", "invalid_request_error", "unknown_url"),
        ));
    };
    // Azure routes a classic deployment path only with an api-version; without one it is a 404,
    // recorded so a test can tell "never arrived" from "arrived without api-version".
    if matches!(dialect, Dialect::Azure { deployment: Some(_) }) && !has_api_version(&received) {
        let reply = providers::azure_error(StatusCode::NOT_FOUND, AZURE_NOT_FOUND);
        return Ok(state.answer(&received, reply, None, Knobs::default()).await);
    }
    // An Entra ID token in place of the key, where the mock has an application for it.
    let entra_token = state.config.azure_ad_client.is_some()
        && matches!(dialect, Dialect::Azure { .. })
        && state.tokens.authorised(&received);
    let reply = providers::reply(api, &dialect, &received, &knobs, &state.config, entra_token);
    Ok(state.answer(&received, reply, None, knobs).await)
}

/// Which API a path serves, and in whose dialect: OpenAI's `/v1/…` (or bare; Responses only
/// there), Anthropic's `/v1/messages`, Azure's classic `/openai/deployments/{d}/…` and its
/// `/openai/v1/…`.
fn route(path: &str) -> Option<(Api, Dialect)> {
    let openai_api = |rest: &str| match rest {
        "/chat/completions" => Some(Api::Chat),
        "/completions" => Some(Api::Completions),
        "/embeddings" => Some(Api::Embeddings),
        _ => None,
    };
    if let Some(rest) = path.strip_prefix("/openai/v1") {
        return openai_api(rest).map(|api| (api, Dialect::Azure { deployment: None }));
    }
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (deployment, rest) = rest.split_at(rest.find('/')?);
        if deployment.is_empty() {
            return None;
        }
        return openai_api(rest).map(|api| (api, Dialect::Azure { deployment: Some(deployment.to_owned()) }));
    }
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    match rest {
        "/messages" => Some((Api::Messages, Dialect::Native)),
        "/messages/count_tokens" => Some((Api::CountTokens, Dialect::Native)),
        "/responses" => Some((Api::Responses, Dialect::Native)),
        _ => openai_api(rest).map(|api| (api, Dialect::Native)),
    }
}

/// Whether the query string carries a non-empty `api-version`, which Azure's classic paths need.
fn has_api_version(received: &Received) -> bool {
    received.query_values("api-version").any(|v| !v.is_empty())
}

/// Azure's message for a path (or a classic path without api-version) it does not route.
const AZURE_NOT_FOUND: &str = "Resource not found";

fn respond(reply: Reply, knobs: Knobs) -> Response<MockBody> {
    match reply {
        Reply::Json { status, body } => {
            if let Some(cut) = knobs.cut_after.filter(|_| status == StatusCode::OK) {
                // A non-streaming body cut halfway: declared length, half the bytes, then abort.
                let _ = cut;
                let half = Bytes::from(body.get(..body.len() / 2).unwrap_or(&[]).to_vec());
                let (tx, rx) = mpsc::channel(2);
                let len = body.len();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(half)).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx.send(Err(std::io::Error::other("mock: cut"))).await;
                });
                let mut response = json_response(status, Vec::new());
                *response.body_mut() = MockBody::Channel(rx);
                response.headers_mut().insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
                return response;
            }
            json_response(status, body)
        }
        Reply::Stream { events, content_type } => {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let stream: Vec<u8> = match knobs.cut_after {
                    Some(n) => events.iter().take(n).flat_map(|e| e.iter().copied()).collect(),
                    None => events.iter().flat_map(|e| e.iter().copied()).collect(),
                };
                if let Some(split) = knobs.split_bytes {
                    for piece in stream.chunks(split.max(1)) {
                        if knobs.chunk_delay_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(knobs.chunk_delay_ms)).await;
                        }
                        if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let count = knobs.cut_after.unwrap_or(usize::MAX).min(events.len());
                    for (i, event) in events.into_iter().take(count).enumerate() {
                        if knobs.stall_after == Some(i) {
                            tokio::time::sleep(Duration::from_millis(knobs.stall_ms)).await;
                        }
                        if knobs.chunk_delay_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(knobs.chunk_delay_ms)).await;
                        }
                        if tx.send(Ok(Bytes::from(event))).await.is_err() {
                            return;
                        }
                    }
                }
                if knobs.cut_after.is_some() {
                    // Let what was sent reach the wire, then drop the connection mid-body.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx.send(Err(std::io::Error::other("mock: stream cut"))).await;
                }
            });
            let mut response = Response::new(MockBody::Channel(rx));
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
            response
                .headers_mut()
                .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
            response
        }
    }
}
