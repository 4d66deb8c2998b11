//! Budget alerts to a webhook, as LiteLLM sends them (`general_settings.alerting: ["webhook"]`
//! and the `WEBHOOK_URL` environment variable): a JSON `WebhookEvent` POSTed when a key's,
//! team's, user's or organization's spend reaches its soft budget (`threshold_crossed`) or its
//! max budget (`budget_crossed`), once per budget window (`budget.rs` decides when).
//!
//! Delivery never holds up ingestion: an event goes to a bounded queue ([`QUEUE`]) that one
//! task drains, POSTing each event with a few retries and exponential backoff. An event that
//! cannot be queued or delivered is logged and counted (`sluice_webhook_events_total`), never
//! fatal. The event names the key by its id (`token`), never by the key or its digest.
//!
//! Plain `http://` only: hyper without a TLS stack keeps the dependency tree small. For an
//! https endpoint, POST to a relay next to the control plane.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, inc};

/// Events waiting for delivery; beyond this they are dropped (and counted).
pub const QUEUE: usize = 1024;

/// Where events go: an `http://host[:port][/path][?query]` URL, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    host: String,
    port: u16,
    /// `host[:port]` as written (the `Host` header).
    authority: String,
    /// Path and query (`/` when the URL has none).
    path: String,
}

impl WebhookUrl {
    /// Errors never repeat the URL: a webhook URL often carries a secret in its path.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = match url.strip_prefix("http://") {
            Some(rest) => rest,
            None if url.starts_with("https://") => {
                return Err("WEBHOOK_URL: https is not supported (the control plane has no TLS client); \
                            POST to an http:// relay instead"
                    .into());
            }
            None => return Err("WEBHOOK_URL must be an http:// URL".into()),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        if authority.is_empty() || authority.contains('@') || path.chars().any(|c| c.is_control() || c == ' ') {
            return Err("WEBHOOK_URL must be http://host[:port][/path] (no user info, no spaces)".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            // [v6]:port
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or("WEBHOOK_URL: unclosed [ in the host")?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => 80,
            Some(p) => p.parse::<u16>().map_err(|_| "WEBHOOK_URL: the port is not a number from 0 to 65535")?,
        };
        if host.is_empty() {
            return Err("WEBHOOK_URL has no host".into());
        }
        Ok(Self { host: host.to_owned(), port, authority: authority.to_owned(), path })
    }

    /// `host[:port]`: what may be logged (the path may hold a secret).
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// The webhook `general_settings` asks for: `alerting` must list `"webhook"` and `WEBHOOK_URL`
/// (passed in) must be set, as in LiteLLM. Other alerting channels are not built (a warning).
pub fn webhook_from_settings(settings: &Value, webhook_url: Option<&str>) -> Result<Option<WebhookUrl>, String> {
    let channels = match settings.get("alerting") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(channels)) => channels,
        Some(_) => return Err("general_settings.alerting must be a list, e.g. [\"webhook\"]".into()),
    };
    let mut webhook = false;
    for channel in channels {
        match channel.as_str() {
            Some("webhook") => webhook = true,
            Some(other) => {
                eprintln!("warning: general_settings.alerting: {other:?} is not supported (only \"webhook\")")
            }
            None => return Err("general_settings.alerting must be a list of names, e.g. [\"webhook\"]".into()),
        }
    }
    if !webhook {
        return Ok(None);
    }
    match webhook_url.filter(|u| !u.is_empty()) {
        Some(url) => WebhookUrl::parse(url).map(Some),
        None => {
            eprintln!(
                "warning: general_settings.alerting lists \"webhook\" but WEBHOOK_URL is not set: no budget webhooks"
            );
            Ok(None)
        }
    }
}

/// LiteLLM's `WebhookEvent` (`CallInfo` and `event`, `event_group`, `event_message`). Absent
/// values are sent as `null`, as LiteLLM does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookEvent {
    /// USD spent in the budget window of `event_group`'s entity.
    pub spend: f64,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    /// The id of the key whose usage crossed the threshold (`key_…`): never the key, never
    /// its digest.
    pub token: Option<String>,
    pub customer_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub user_email: Option<String>,
    pub key_alias: Option<String>,
    pub organization_id: Option<String>,
    pub projected_exceeded_date: Option<String>,
    pub projected_spend: Option<f64>,
    /// `threshold_crossed` (soft budget) or `budget_crossed` (max budget).
    pub event: &'static str,
    /// `key`, `team`, `user` or `organization`.
    pub event_group: &'static str,
    pub event_message: String,
}

/// How events are delivered (the defaults; tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub queue: usize,
    pub attempts: u32,
    pub first_backoff: Duration,
    pub attempt_timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            queue: QUEUE,
            attempts: 4,
            first_backoff: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// The sending side: cheap to call from under the budget lock (never waits).
pub struct Webhook {
    queue: mpsc::Sender<WebhookEvent>,
    metrics: Arc<Metrics>,
}

impl Webhook {
    /// Starts the delivery task on the current tokio runtime (None outside one).
    pub fn start(url: WebhookUrl, metrics: Arc<Metrics>, delivery: Delivery) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (queue, events) = mpsc::channel(delivery.queue.max(1));
        runtime.spawn(deliver_all(url, events, Arc::clone(&metrics), delivery));
        Some(Self { queue, metrics })
    }

    /// Queues an event; a full queue drops it (logged and counted).
    pub fn send(&self, event: WebhookEvent) {
        if let Err(e) = self.queue.try_send(event) {
            inc(&self.metrics.webhook_dropped, 1);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the queue is full",
                mpsc::error::TrySendError::Closed(_) => "delivery has stopped",
            };
            eprintln!("sluice: budget webhook: an event was dropped ({why})");
        }
    }
}

async fn deliver_all(url: WebhookUrl, mut events: mpsc::Receiver<WebhookEvent>, metrics: Arc<Metrics>, d: Delivery) {
    while let Some(event) = events.recv().await {
        let body = match serde_json::to_vec(&event) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                inc(&metrics.webhook_failed, 1);
                eprintln!("sluice: budget webhook: cannot encode an event: {e}");
                continue;
            }
        };
        let mut backoff = d.first_backoff;
        let mut attempt = 1;
        loop {
            let (retry, why) = match tokio::time::timeout(d.attempt_timeout, post(&url, body.clone())).await {
                Ok(Ok(status)) if status.is_success() => {
                    inc(&metrics.webhook_sent, 1);
                    break;
                }
                Ok(Ok(status)) => {
                    // The receiver refused this event (4xx): sending it again would not help.
                    let retry = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
                    (retry, format!("HTTP {status}"))
                }
                Ok(Err(e)) => (true, e),
                Err(_) => (true, format!("no answer within {} ms", d.attempt_timeout.as_millis())),
            };
            if !retry || attempt >= d.attempts {
                inc(&metrics.webhook_failed, 1);
                eprintln!(
                    "sluice: budget webhook: {} event for {} not delivered after {attempt} attempt(s): {why}",
                    event.event, event.event_group
                );
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }
}

/// One POST on a fresh connection (events are rare: no pool).
async fn post(url: &WebhookUrl, body: Bytes) -> Result<hyper::StatusCode, String> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.authority))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(url.path.as_str())
        .header(hyper::header::HOST, url.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let answer = sender.send_request(request).await;
    connection.abort();
    answer.map(|r| r.status()).map_err(|e| format!("HTTP: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn urls_are_split_for_the_client_and_https_is_refused_without_echoing_the_url() {
        let u = WebhookUrl::parse("http://127.0.0.1:8080/hooks/budget?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/hooks/budget?x=1")
        );
        let u = WebhookUrl::parse("http://alerts.internal").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("alerts.internal", 80, "/"));
        let u = WebhookUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("::1", 9, "[::1]:9"));
        assert_eq!(WebhookUrl::parse("http://h?q").unwrap().path, "/?q");
        for bad in ["https://hooks.example/T0SECRET", "ftp://h/T0SECRET", "http://u:T0SECRET@h/", "http://h:99999/"] {
            let e = WebhookUrl::parse(bad).unwrap_err();
            assert!(!e.contains("T0SECRET") && !e.contains("99999"), "{e}");
        }
        assert!(WebhookUrl::parse("https://x").unwrap_err().contains("https is not supported"));
    }

    #[test]
    fn the_webhook_is_on_when_alerting_lists_it_and_webhook_url_is_set() {
        let on = json!({"alerting": ["slack", "webhook"]});
        assert!(webhook_from_settings(&on, Some("http://h/x")).unwrap().is_some());
        assert_eq!(webhook_from_settings(&on, None).unwrap(), None, "no URL: a warning, not an error");
        assert_eq!(webhook_from_settings(&json!({"alerting": ["slack"]}), Some("http://h")).unwrap(), None);
        assert_eq!(webhook_from_settings(&json!({}), Some("http://h")).unwrap(), None);
        assert!(webhook_from_settings(&json!({"alerting": "webhook"}), Some("http://h")).is_err());
        assert!(webhook_from_settings(&on, Some("https://h")).is_err(), "asked for, and impossible: refuse to start");
    }

    pub(crate) fn event(kind: &'static str) -> WebhookEvent {
        WebhookEvent {
            spend: 1.5,
            max_budget: Some(2.0),
            soft_budget: Some(1.0),
            token: Some("key_1".into()),
            customer_id: None,
            user_id: Some("alice".into()),
            team_id: None,
            team_alias: None,
            user_email: None,
            key_alias: None,
            organization_id: Some("acme".into()),
            projected_exceeded_date: None,
            projected_spend: None,
            event: kind,
            event_group: "user",
            event_message: "User Budget: Soft Budget Crossed".into(),
        }
    }

    /// A receiver answering each request with the next status (the last one repeats); what it
    /// got (path and JSON body) is kept.
    pub(crate) async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&got);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(read) = stream.read(&mut chunk).await else { break (String::new(), Vec::new()) };
                    if read == 0 {
                        break (String::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= end + 4 + length {
                            break (text[..end].to_owned(), buf[end + 4..end + 4 + length].to_vec());
                        }
                    }
                };
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                if let Ok(json) = serde_json::from_slice(&body) {
                    kept.lock().unwrap().push((path, json));
                }
                let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
                n += 1;
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (format!("http://{addr}/hook?src=sluice"), got)
    }

    fn fast() -> Delivery {
        Delivery {
            queue: 8,
            attempts: 3,
            first_backoff: Duration::from_millis(10),
            attempt_timeout: Duration::from_secs(2),
        }
    }

    async fn settled(metrics: &Metrics, total: u64) {
        for _ in 0..300 {
            let done = metrics.webhook_sent.load(Ordering::Relaxed) + metrics.webhook_failed.load(Ordering::Relaxed);
            if done >= total {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("webhook deliveries never settled");
    }

    #[tokio::test]
    async fn an_event_is_posted_as_litellm_json_and_retried_after_a_server_error() {
        let (url, got) = receiver(vec![503, 200]).await;
        let metrics = Arc::new(Metrics::default());
        let hook = Webhook::start(WebhookUrl::parse(&url).unwrap(), Arc::clone(&metrics), fast()).unwrap();
        hook.send(event("threshold_crossed"));
        settled(&metrics, 1).await;
        assert_eq!(metrics.webhook_sent.load(Ordering::Relaxed), 1);
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "the first attempt got a 503, the second a 200");
        let (path, body) = &got[1];
        assert_eq!(path, "/hook?src=sluice");
        assert_eq!(body["event"], "threshold_crossed");
        assert_eq!((body["event_group"].as_str(), body["token"].as_str()), (Some("user"), Some("key_1")));
        assert_eq!((body["spend"].as_f64(), body["max_budget"].as_f64()), (Some(1.5), Some(2.0)));
        assert_eq!((body["soft_budget"].as_f64(), body["organization_id"].as_str()), (Some(1.0), Some("acme")));
        assert!(body["team_id"].is_null() && body["customer_id"].is_null(), "LiteLLM sends absent fields as null");
    }

    #[tokio::test]
    async fn a_refused_or_unreachable_webhook_is_counted_and_does_not_stop_delivery() {
        // A 400 is not retried; a closed port is retried, then given up.
        let (url, got) = receiver(vec![400, 200]).await;
        let metrics = Arc::new(Metrics::default());
        let hook = Webhook::start(WebhookUrl::parse(&url).unwrap(), Arc::clone(&metrics), fast()).unwrap();
        hook.send(event("budget_crossed"));
        hook.send(event("budget_crossed"));
        settled(&metrics, 2).await;
        assert_eq!(
            (metrics.webhook_failed.load(Ordering::Relaxed), metrics.webhook_sent.load(Ordering::Relaxed)),
            (1, 1)
        );
        assert_eq!(got.lock().unwrap().len(), 2, "the refused event was not sent again");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let hook =
            Webhook::start(WebhookUrl::parse(&format!("http://{closed}/")).unwrap(), Arc::clone(&metrics), fast())
                .unwrap();
        hook.send(event("budget_crossed"));
        settled(&metrics, 1).await;
        assert_eq!(metrics.webhook_failed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_without_waiting() {
        // A receiver that never answers holds the first event; the queue (8) then fills.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let metrics = Arc::new(Metrics::default());
        let slow = Delivery { attempt_timeout: Duration::from_secs(30), ..fast() };
        let hook = Webhook::start(WebhookUrl::parse(&url).unwrap(), Arc::clone(&metrics), slow).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..20 {
            hook.send(event("budget_crossed"));
        }
        assert!(started.elapsed() < Duration::from_millis(100), "sending never waits");
        assert!(metrics.webhook_dropped.load(Ordering::Relaxed) >= 11, "{:?}", metrics.webhook_dropped);
        drop(listener);
    }
}
