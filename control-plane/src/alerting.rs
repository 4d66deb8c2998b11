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
//! `http://` and `https://` through `http_client` (its trust rules: `webpki-roots`, plus
//! `SSL_CERT_FILE`'s CAs). Errors never repeat the URL beyond `host[:port]`: its path often
//! carries a secret.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::http_client::{self, HttpTarget, HttpUrl};

use crate::metrics::{Metrics, inc};

/// Events waiting for delivery; beyond this they are dropped (and counted).
pub const QUEUE: usize = 1024;

/// The webhook `general_settings` asks for: `alerting` must list `"webhook"` and `WEBHOOK_URL`
/// (passed in) must be set, as in LiteLLM. Other alerting channels are not built: refused, as is
/// a webhook with no URL (an alert that would never be sent).
pub fn webhook_from_settings(settings: &Value, webhook_url: Option<&str>) -> Result<Option<HttpUrl>, String> {
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
                return Err(format!(
                    "general_settings.alerting: {other:?} is not supported by Sluice (only \"webhook\")"
                ));
            }
            None => return Err("general_settings.alerting must be a list of names, e.g. [\"webhook\"]".into()),
        }
    }
    if !webhook {
        return Ok(None);
    }
    match webhook_url.filter(|u| !u.is_empty()) {
        Some(url) => HttpUrl::parse(url, "WEBHOOK_URL").map(Some),
        None => Err("general_settings.alerting lists \"webhook\" but WEBHOOK_URL is not set: set it, or remove \
                     the webhook"
            .into()),
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
    pub fn start(url: HttpTarget, metrics: Arc<Metrics>, delivery: Delivery) -> Option<Self> {
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

async fn deliver_all(url: HttpTarget, mut events: mpsc::Receiver<WebhookEvent>, metrics: Arc<Metrics>, d: Delivery) {
    while let Some(event) = events.recv().await {
        let body = match serde_json::to_vec(&event) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                inc(&metrics.webhook_failed, 1);
                eprintln!("sluice: budget webhook: cannot encode an event: {e}");
                continue;
            }
        };
        let retries = http_client::Retries {
            attempts: d.attempts,
            first_backoff: d.first_backoff,
            attempt_timeout: d.attempt_timeout,
        };
        match http_client::post_with_retries(&url, &[("content-type", "application/json")], body, retries).await {
            Ok(()) => inc(&metrics.webhook_sent, 1),
            Err((attempts, why)) => {
                inc(&metrics.webhook_failed, 1);
                eprintln!(
                    "sluice: budget webhook: {} event for {} not delivered after {attempts} attempt(s): {why}",
                    event.event, event.event_group
                );
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    #[test]
    fn the_webhook_is_on_when_alerting_lists_it_and_webhook_url_is_set() {
        let on = json!({"alerting": ["webhook"]});
        assert!(webhook_from_settings(&on, Some("http://h/x")).unwrap().is_some());
        assert!(webhook_from_settings(&on, Some("https://h/x")).unwrap().unwrap().is_https());
        // Asked for and not possible: refused, never silently off.
        assert!(webhook_from_settings(&on, None).unwrap_err().contains("WEBHOOK_URL is not set"));
        let slack = webhook_from_settings(&json!({"alerting": ["slack"]}), Some("http://h")).unwrap_err();
        assert!(slack.contains("\"slack\" is not supported by Sluice"), "{slack}");
        assert_eq!(webhook_from_settings(&json!({}), Some("http://h")).unwrap(), None);
        assert!(webhook_from_settings(&json!({"alerting": "webhook"}), Some("http://h")).is_err());
        assert!(webhook_from_settings(&on, Some("ftp://h")).is_err(), "asked for, and impossible: refuse to start");
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
        let (addr, got) = receiver_on(statuses, None).await;
        (format!("http://{addr}/hook?src=sluice"), got)
    }

    /// The same over TLS with this certificate chain and key.
    async fn tls_receiver(
        statuses: Vec<u16>,
        cert: &Path,
        key: &Path,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, Value)>>>) {
        use rustls::pki_types::PrivateKeyDer;
        let chain = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        receiver_on(statuses, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn receiver_on(
        statuses: Vec<u16>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, Value)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&got);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
                n += 1;
                match &tls {
                    None => answer(stream, status, &kept).await,
                    // A client that refuses the certificate ends the handshake: nothing is kept.
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => answer(stream, status, &kept).await,
                        Err(_) => continue,
                    },
                }
            }
        });
        (addr, got)
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, status: u16, kept: &Mutex<Vec<(String, Value)>>) {
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
        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
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
        let hook = Webhook::start(HttpTarget::parse(&url, "WEBHOOK_URL", None).unwrap(), Arc::clone(&metrics), fast())
            .unwrap();
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
        let hook = Webhook::start(HttpTarget::parse(&url, "WEBHOOK_URL", None).unwrap(), Arc::clone(&metrics), fast())
            .unwrap();
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
        let hook = Webhook::start(
            HttpTarget::parse(&format!("http://{closed}/"), "WEBHOOK_URL", None).unwrap(),
            Arc::clone(&metrics),
            fast(),
        )
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
        let hook =
            Webhook::start(HttpTarget::parse(&url, "WEBHOOK_URL", None).unwrap(), Arc::clone(&metrics), slow).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..20 {
            hook.send(event("budget_crossed"));
        }
        assert!(started.elapsed() < Duration::from_millis(100), "sending never waits");
        assert!(metrics.webhook_dropped.load(Ordering::Relaxed) >= 11, "{:?}", metrics.webhook_dropped);
        drop(listener);
    }

    fn sent_and_failed(metrics: &Metrics) -> (u64, u64) {
        (metrics.webhook_sent.load(Ordering::Relaxed), metrics.webhook_failed.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn https_delivers_to_a_receiver_whose_certificate_names_the_host_and_chains_to_ssl_cert_file() {
        let ca = crate::test_certs::TestCa::new("webhook test CA");
        let leaf = ca.leaf("receiver", "DNS:localhost,IP:127.0.0.1");
        let (addr, got) = tls_receiver(vec![200], &leaf.cert, &leaf.key).await;
        let metrics = Arc::new(Metrics::default());
        // By name (SNI and a DNS name check) and by address (an IP address SAN).
        for url in [format!("https://localhost:{}/hook?src=sluice", addr.port()), format!("https://{addr}/by-ip")] {
            let target = HttpTarget::parse(&url, "WEBHOOK_URL", Some(&ca.cert())).unwrap();
            let hook = Webhook::start(target, Arc::clone(&metrics), fast()).unwrap();
            hook.send(event("budget_crossed"));
        }
        settled(&metrics, 2).await;
        assert_eq!(sent_and_failed(&metrics), (2, 0));
        let got = got.lock().unwrap().clone();
        let mut paths: Vec<&str> = got.iter().map(|(path, _)| path.as_str()).collect();
        paths.sort_unstable(); // two webhooks, two delivery tasks: any order
        assert_eq!(paths, ["/by-ip", "/hook?src=sluice"]);
        assert_eq!(got[0].1["event"], "budget_crossed");
    }

    #[tokio::test]
    async fn https_refuses_a_certificate_for_another_host_or_from_an_untrusted_ca_and_counts_it_failed() {
        let ca = crate::test_certs::TestCa::new("webhook test CA");
        // A valid certificate from a trusted CA, for another name than the URL's host.
        let other = ca.leaf("other", "DNS:other.example,IP:10.9.8.7");
        let (wrong_name, got_wrong_name) = tls_receiver(vec![200], &other.cert, &other.key).await;
        // The right name, but nothing vouches for it: webpki-roots only, no SSL_CERT_FILE.
        let leaf = ca.leaf("receiver", "DNS:localhost,IP:127.0.0.1");
        let (untrusted, got_untrusted) = tls_receiver(vec![200], &leaf.cert, &leaf.key).await;
        let metrics = Arc::new(Metrics::default());
        let slow_retries = Delivery { first_backoff: Duration::from_secs(5), ..fast() };
        let cases = [
            (format!("https://localhost:{}/T0SECRET", wrong_name.port()), Some(ca.cert())),
            (format!("https://{wrong_name}/T0SECRET"), Some(ca.cert())),
            (format!("https://localhost:{}/T0SECRET", untrusted.port()), None),
        ];
        let started = std::time::Instant::now();
        for (url, roots) in &cases {
            let target = HttpTarget::parse(url, "WEBHOOK_URL", roots.as_deref()).unwrap();
            Webhook::start(target, Arc::clone(&metrics), slow_retries).unwrap().send(event("budget_crossed"));
        }
        settled(&metrics, 3).await;
        assert_eq!(sent_and_failed(&metrics), (0, 3));
        assert!(started.elapsed() < Duration::from_secs(5), "a refused certificate is not retried");
        assert!(got_wrong_name.lock().unwrap().is_empty() && got_untrusted.lock().unwrap().is_empty());
    }
}
